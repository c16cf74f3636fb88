"""Ship an artifact to a host once, verified by checksum, and unpack it into releases/<id>."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from bluegreen import commands, failpoints
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host
from bluegreen.layout import Layout, artifact_suffix


@dataclass(frozen=True)
class Artifact:
    path: Path
    checksum: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stored_name(self) -> str:
        """Content-addressed on the host: the same bytes are never uploaded twice."""
        return self.checksum + artifact_suffix(self.name)


def inspect(path: Path) -> Artifact:
    if not path.is_file():
        raise BluegreenError(f"artifact {path} not found (or not a file)", host="local",
                             phase="upload", hint="build it first, or pass --artifact PATH")
    if path.stat().st_size == 0:
        raise BluegreenError(f"artifact {path} is empty", host="local", phase="upload",
                             hint="the build produced no output: check the build step")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Artifact(path, digest.hexdigest(), path.stat().st_size)


def ship(host: Host, layout: Layout, artifact: Artifact, release_id: str, file_name: str,
         keep: int, protected: list[str]) -> int:
    """Upload unless the same bytes are there, unpack once, prune; returns bytes sent.

    One remote command: the directories and the stored artifact are checked over SFTP."""
    stored = f"{layout.artifacts}/{artifact.stored_name}"
    for d in (layout.artifacts, layout.releases, layout.slot_dir("blue"), layout.slot_dir("green")):
        host.makedirs(d)
    uploaded = 0
    finalize = ""
    # The stored name is the checksum, and only a verified upload is ever renamed to it
    # (finalize_upload), so the same name and size mean the same bytes: no re-hash.
    # (size() is 0 for a missing file, and artifacts are never empty.)
    if host.size(stored) != artifact.size:
        tmp = f"{layout.artifacts}/.upload-{uuid.uuid4().hex[:8]}"
        try:
            host.put(artifact.path, tmp)
        except BaseException:
            host.remove(tmp)
            raise
        failpoints.hit("upload.mid")
        finalize = commands.finalize_upload(tmp, stored, artifact.checksum) + " && "
        uploaded = artifact.size
    release_dir = layout.release(release_id)
    host.run(finalize + commands.unpack(stored, release_dir, artifact.checksum, file_name)
             + " && " + commands.prune_releases(layout, keep, [*protected, release_id]),
             timeout=300, hint="is the artifact a valid tarball, and is there disk space?",
             says=f"verify, unpack into {release_dir}, prune old releases")
    return uploaded


def has_release(host: Host, layout: Layout, release_id: str) -> bool:
    return host.exists(f"{layout.release(release_id)}/.bluegreen-release")


def list_releases(host: Host, layout: Layout) -> list[tuple[str, int]]:
    out = host.run(commands.list_releases(layout), timeout=30, mutates=False).stdout
    return commands.parse_list_releases(out)
