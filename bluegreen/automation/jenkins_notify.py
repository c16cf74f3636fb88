"""Deploy what a finished Jenkins build archived: find the artifact, download, verify.

The Notification plugin lists archived artifacts as {file name: {"archive": url}}. At
COMPLETED a freestyle job may not have archived yet, so a COMPLETED message whose artifact
is not listed is ignored and FINALIZED (same build, same delivery id) does the work.
Only URLs under the configured Jenkins URL are fetched: the credentials go nowhere else,
and a crafted message cannot make the service download from an arbitrary host.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urljoin

import requests

from bluegreen.automation.events import BuildEvent, Ignored
from bluegreen.automation.steps import JobContext, JobFailed

_HEX64 = re.compile(r"\b([0-9a-fA-F]{64})\b")
_CHUNK = 1024 * 1024


def build_base_url(event: BuildEvent, jenkins_url: str) -> str:
    if event.build_url:
        return event.build_url.rstrip("/") + "/"
    if event.build_path:
        return urljoin(jenkins_url, event.build_path.lstrip("/")).rstrip("/") + "/"
    raise JobFailed("the notification carries neither build.full_url nor build.url")


def _relative_path(name: str, url: str) -> str:
    _, sep, rest = url.partition("/artifact/")
    return unquote(rest) if sep else name


def listed_artifact(event: BuildEvent, pattern: str) -> tuple[str, dict[str, str]] | None:
    """(url, locations) of the one listed artifact matching `pattern` (a path in the build's
    archive, glob allowed); None if none is listed; JobFailed if several are."""
    found: list[tuple[str, dict[str, str]]] = []
    for name, locations in event.artifacts.items():
        url = locations.get("archive", "")
        if not url:
            continue
        relative = _relative_path(name, url)
        if fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(name, pattern):
            found.append((url, locations))
    if len(found) > 1:
        raise JobFailed(f"{len(found)} archived artifacts match {pattern!r}; make it specific")
    return found[0] if found else None


def check_ready(event: BuildEvent, pattern: str) -> None:
    """For the receiver: raise Ignored if this message is early (see module doc)."""
    if event.phase == "COMPLETED" and listed_artifact(event, pattern) is None:
        raise Ignored(f"artifact {pattern!r} not archived yet at COMPLETED; waiting for FINALIZED")


def artifact_url(event: BuildEvent, pattern: str, jenkins_url: str) -> tuple[str, str]:
    """(url, sha256 from the payload or "")."""
    listed = listed_artifact(event, pattern)
    if listed is not None:
        url, locations = listed
        return url, locations.get("sha256", "").lower()
    if any(ch in pattern for ch in "*?["):
        raise JobFailed(f"build {event.job}#{event.number} lists no archived artifact "
                        f"matching {pattern!r}")
    return build_base_url(event, jenkins_url) + "artifact/" + quote(pattern), ""


def is_under(url: str, prefix: str) -> bool:
    return url.startswith(prefix.rstrip("/") + "/")


def parse_checksum_file(text: str) -> str:
    """`<hex>`, `<hex>  name` (sha256sum) or `SHA256 (name) = <hex>` (BSD)."""
    match = _HEX64.search(text)
    if match is None:
        raise JobFailed("the .sha256 file holds no SHA-256")
    return match.group(1).lower()


def published_checksum(session: requests.Session, url: str, timeout: float) -> str:
    """The sha256 from `<artifact>.sha256`; "" if there is none (404). Any other failure
    fails the job: a checksum we could not read is not a checksum we may skip."""
    try:
        response = session.get(url + ".sha256", timeout=timeout)
    except requests.RequestException as exc:
        raise JobFailed(f"could not fetch {url}.sha256: {type(exc).__name__}") from None
    if response.status_code == 404:
        return ""
    if response.status_code != 200:
        raise JobFailed(f"fetching {url}.sha256 answered HTTP {response.status_code}")
    return parse_checksum_file(response.text[:4096])


def download(session: requests.Session, url: str, dest: Path, *, timeout: float,
             max_bytes: int) -> tuple[int, str]:
    """Stream url to dest; return (size, sha256). A partial file never stays behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with session.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise JobFailed(f"artifact download answered HTTP {response.status_code}: {url}")
            with partial.open("wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise JobFailed(f"artifact is larger than {max_bytes} bytes: {url}")
                    digest.update(chunk)
                    out.write(chunk)
        partial.replace(dest)
    except requests.RequestException as exc:
        raise JobFailed(f"artifact download failed: {type(exc).__name__}: {url}") from None
    finally:
        partial.unlink(missing_ok=True)
    return size, digest.hexdigest()


def fetch_artifact(ctx: JobContext, session: requests.Session, event: BuildEvent, *,
                   pattern: str, jenkins_url: str, dest_dir: Path, timeout: float,
                   max_bytes: int, require_checksum: bool) -> Path:
    url, expected = artifact_url(event, pattern, jenkins_url)
    if not is_under(url, jenkins_url):
        raise JobFailed(f"artifact URL {url[:200]} is not under jenkins.url {jenkins_url}; "
                        "refusing to fetch (set jenkins.url to Jenkins' root URL)")
    ctx.say(f"== fetch artifact: {url}")
    if not expected:
        expected = published_checksum(session, url, timeout)
    if not expected and require_checksum:
        raise JobFailed(f"no sha256 for {url} (neither in the notification nor as .sha256) "
                        "and require_checksum is set")
    name = PurePosixPath(unquote(url.rsplit("/", 1)[-1])).name or "artifact"
    dest = dest_dir / name
    size, actual = download(session, url, dest, timeout=timeout, max_bytes=max_bytes)
    if size == 0:
        dest.unlink(missing_ok=True)
        raise JobFailed(f"artifact is empty: {url}")
    if expected and actual != expected:
        dest.unlink(missing_ok=True)
        raise JobFailed(f"artifact sha256 mismatch: expected {expected}, got {actual}")
    ctx.say(f"== fetch artifact: {size} bytes, sha256 {actual}"
            + (" (verified)" if expected else " (no checksum published)"))
    return dest
