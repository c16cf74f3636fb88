"""Ship an artifact to a host once, verified by checksum, and unpack it into releases/<id>.

Artifacts come the way classic servers have them: a tarball, a .zip or .war (unpacked like a
tarball: the release directory is a Tomcat docBase), or a single file (a jar, a binary).

An archive is inspected here, on the deploying machine, before anything is sent: a corrupt
one, or one with a member that would land outside the release directory (`..`, an absolute
path, a symlink or hard link pointing out, a device file), is refused with the member and
why. The host verifies the sha256 of what it received against the inspected file before it
unpacks, so the bytes tar or unzip see there are the bytes checked here; their own defences
(commands.unpack) stay on as a second line.

Disk space is checked on every host before the first byte goes to any of them; running out
anyway (another writer, an estimate that was off) is a "disk full" error naming the host and
the path, and what this run wrote is removed, so a failed deploy never leaves the next one
worse off.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import lzma
import os
import re
import stat
import tarfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from bluegreen import commands, failpoints
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.hosts import Host
from bluegreen.layout import Layout, artifact_suffix

BLOCK = 4096  # files take whole blocks (ext4, xfs, tmpfs pages): size each one up to that
MiB = 1 << 20
# Headroom over the estimate: inodes, extents and large directories it leaves out, the state
# and history writes that follow, and the log of the app we are about to start. A deploy that
# leaves the disk at 100% breaks the very app it started.
MARGIN_MIN = MiB
MARGIN_SHARE = 0.05
FULL_BELOW = MiB  # a write that failed with less than this free ran out of space
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "disk full",
                   "Wrote only")  # GNU tar says only that on ENOSPC
# where unzip lives on the usual distributions: checked over SFTP, no remote command
UNZIP_PATHS = ("/usr/bin/unzip", "/bin/unzip", "/usr/local/bin/unzip")
SYMLINK_DEPTH = 40  # as Linux's MAXSYMLINKS: deeper is a loop


@dataclass(frozen=True)
class Artifact:
    path: Path
    checksum: str
    size: int
    kind: str = "file"  # tar | zip | file (commands.archive_kind)
    unpacked_size: int = 0  # bytes on disk once unpacked (estimate, in whole blocks)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stored_name(self) -> str:
        """Content-addressed on the host: the same bytes are never uploaded twice."""
        suffix = artifact_suffix(self.name)
        if self.kind == "zip":
            suffix = os.path.splitext(self.name)[1].lower()
        return self.checksum + suffix


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
    size = path.stat().st_size
    kind = commands.archive_kind(path.name)
    if kind == "file":
        return Artifact(path, digest.hexdigest(), size, kind, _blocks(size))
    entries = _read_archive(path, kind)
    return Artifact(path, digest.hexdigest(), size, kind, _check_entries(path, entries))


# ---------------------------------------------------------------- archives, read locally


@dataclass(frozen=True)
class Entry:
    name: str  # as the archive spells it
    kind: str  # file | dir | symlink | hardlink | device | fifo
    size: int = 0
    target: str = ""  # symlink or hard link target


class Refused(Exception):
    """One member of the archive would not stay inside the release directory."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"member {name!r} {problem}")


def _read_archive(path: Path, kind: str) -> list[Entry]:
    try:
        return _tar_entries(path) if kind == "tar" else _zip_entries(path)
    except Refused as exc:
        raise _refused(path, str(exc)) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
            lzma.LZMAError, RuntimeError, ValueError, NotImplementedError) as exc:
        what = "tar" if kind == "tar" else path.suffix.lower().lstrip(".")
        raise BluegreenError(
            f"artifact {path} is not a valid {what} archive (corrupt or truncated): "
            f"{type(exc).__name__}: {exc}", host="local", phase="inspect",
            hint="rebuild it, or fetch it again if it was downloaded; nothing was "
                 "uploaded") from None


def _refused(path: Path, why: str) -> BluegreenError:
    return BluegreenError(
        f"artifact {path} refused: {why}", host="local", phase="inspect",
        hint="rebuild the archive so that every member stays inside it (relative paths "
             "without `..`, links only to its own members, no device files); nothing was "
             "uploaded")


class _HeaderWatch(tarfile.TarInfo):
    """Remembers why tarfile stopped: it ends quietly at a damaged header after the first
    member, where GNU tar on the host would skip on and fail."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.bluegreen_stop = exc  # type: ignore[attr-defined]
            raise


def _tar_entries(path: Path) -> list[Entry]:
    entries = []
    with tarfile.open(path, "r:*", tarinfo=_HeaderWatch) as tar:
        for m in tar:
            if m.isfile():
                entries.append(Entry(m.name, "file", m.size))
            elif m.isdir():
                entries.append(Entry(m.name, "dir"))
            elif m.issym():
                entries.append(Entry(m.name, "symlink", target=m.linkname))
            elif m.islnk():
                entries.append(Entry(m.name, "hardlink", target=m.linkname))
            elif m.ischr() or m.isblk():
                entries.append(Entry(m.name, "device"))
            elif m.isfifo():
                entries.append(Entry(m.name, "fifo"))
            else:  # an unknown type: GNU tar writes it as a regular file
                entries.append(Entry(m.name, "file", m.size))
        stop = getattr(tar, "bluegreen_stop", None)
        if isinstance(stop, tarfile.InvalidHeaderError | tarfile.TruncatedHeaderError):
            last = entries[-1].name if entries else "(none)"
            raise tarfile.ReadError(f"damaged header after member {last!r}: {stop}")
        # Read to the end: a compressed stream checks its CRC and length only there, and the
        # rest is the end-of-archive padding (read forward, never seek back: a backward seek
        # in a gzip stream decompresses it all again).
        fileobj = tar.fileobj
        assert fileobj is not None
        for _chunk in iter(lambda: fileobj.read(1 << 20), b""):
            pass
    return entries


def _zip_entries(path: Path) -> list[Entry]:
    entries = []
    seen: set[str] = set()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if name in seen:  # which copy wins differs between tools: refuse the guess
                raise Refused(name, "appears twice in the archive")
            seen.add(name)
            if info.flag_bits & 0x1:
                raise Refused(name, "is encrypted (unzip would stop and ask for a password)")
            # unzip restores the Unix mode kept in the high bits whatever system made it:
            # read it the same way, so a symlink or device is seen here as there
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir() or ftype == stat.S_IFDIR:
                entries.append(Entry(name, "dir"))
            elif ftype == stat.S_IFLNK:
                target = zf.read(info).decode("utf-8", "surrogateescape")
                entries.append(Entry(name, "symlink", target=target))
            elif ftype in (stat.S_IFCHR, stat.S_IFBLK):
                entries.append(Entry(name, "device"))
            elif ftype in (stat.S_IFIFO, stat.S_IFSOCK):
                entries.append(Entry(name, "fifo"))
            else:
                entries.append(Entry(name, "file", info.file_size))
        bad = zf.testzip()  # decompresses every member and checks its CRC
        if bad is not None:
            raise zipfile.BadZipFile(f"member {bad!r} fails its CRC check")
    return entries


def _parts(name: str, zip_names: bool) -> list[str]:
    """The path components of a member name, or Refused when it is absolute or has `..`.
    unzip reads `\\` as a separator in names from Windows archives: so do we, for zips."""
    text = name.replace("\\", "/") if zip_names else name
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise Refused(name, "has an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(name, "has a '..' component (path traversal out of the release)")
    return parts


class _Escapes(Exception):
    pass


class _Loop(Exception):
    pass


def _resolve(parts: list[str], links: dict[tuple[str, ...], str], depth: int = 0
             ) -> list[str]:
    """Where `parts` lands once the archive's own symlinks exist, as the kernel would walk
    it (a `..` after a symlink goes up from the link's target, not from the link). Raises
    _Escapes when it leaves the release, _Loop for a symlink cycle."""
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise _Escapes
            out.pop()
            continue
        out.append(part)
        target = links.get(tuple(out))
        if target is None:
            continue
        if depth >= SYMLINK_DEPTH:
            raise _Loop
        if target.startswith("/"):
            raise _Escapes
        out = _resolve(out[:-1] + target.split("/"), links, depth + 1)
    return out


def _check_entries(path: Path, entries: list[Entry]) -> int:
    """Refuse what would leave the release dir; return the unpacked size estimate."""
    zip_names = commands.archive_kind(path.name) == "zip"
    links: dict[tuple[str, ...], str] = {}
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    total = 0
    try:
        for e in entries:
            parts = _parts(e.name, zip_names)
            if not parts:
                if e.kind in ("dir", "file"):
                    continue  # "./": the release dir itself
                raise Refused(e.name, "names the release directory itself")
            key = tuple(parts)
            dirs.update(key[:i] for i in range(1, len(key)))
            if e.kind in ("device", "fifo"):
                raise Refused(e.name, f"is a {'device file' if e.kind == 'device' else 'fifo'}"
                                      " (only files, directories and links are unpacked)")
            if e.kind == "dir":
                dirs.add(key)
            elif e.kind == "file":
                files.add(key)
                total += _blocks(e.size)
            elif e.kind == "symlink":
                links[key] = e.target
            elif e.kind == "hardlink":
                _check_hardlink(e, files, zip_names)
        # Nothing is written through a symlink of the archive: then every name here is where
        # the member lands, and checking each link on its own is enough
        for e in entries:
            for key in _through_links(e, links, zip_names):
                raise Refused(e.name, f"goes through {'/'.join(key)!r}, a symlink of the "
                                      "archive (members are not written through links)")
        for key, target in links.items():
            name = "/".join(key)
            try:
                _resolve([*key[:-1], *target.split("/")], links)
            except _Escapes:
                raise Refused(name, f"is a symlink to {target!r}, which points outside the "
                                    "release") from None
            except _Loop:
                raise Refused(name, f"is a symlink to {target!r} in a symlink loop") from None
    except Refused as exc:
        raise _refused(path, str(exc)) from None
    return total + len(dirs) * BLOCK


def _through_links(e: Entry, links: dict[tuple[str, ...], str], zip_names: bool
                   ) -> list[tuple[str, ...]]:
    """The symlinks of the archive that `e` (or the file it hard-links to) is written
    through."""
    paths = [tuple(_parts(e.name, zip_names))]
    if e.kind == "hardlink":
        paths.append(tuple(_parts(e.target, zip_names)))
    return [p[:i] for p in paths for i in range(1, len(p)) if p[:i] in links]


def _check_hardlink(e: Entry, files: set[tuple[str, ...]], zip_names: bool) -> None:
    """A hard link must name a file unpacked before it: one to anything else either fails on
    the host or, through `..` or `/`, makes a later member overwrite a file outside."""
    try:
        target = tuple(_parts(e.target, zip_names))
    except Refused:
        raise Refused(e.name, f"is a hard link to {e.target!r}, outside the release") from None
    if target not in files:
        raise Refused(e.name, f"is a hard link to {e.target!r}, which is not a file earlier "
                              "in the archive")


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


# ---------------------------------------------------------------- before sending anything


@dataclass(frozen=True)
class Need:
    upload: int  # the artifact, unless the same bytes are stored there already
    unpack: int  # the release dir, unless it is there already

    @property
    def margin(self) -> int:
        return max(MARGIN_MIN, int((self.upload + self.unpack) * MARGIN_SHARE)) \
            if self.upload + self.unpack else 0

    @property
    def total(self) -> int:
        return self.upload + self.unpack + self.margin

    def describe(self) -> str:
        parts = [f"{human(self.upload)} artifact" if self.upload else "",
                 f"{human(self.unpack)} unpacked" if self.unpack else "",
                 f"{human(self.margin)} margin"]
        return " + ".join(p for p in parts if p)


def need_on(host: Host, layout: Layout, artifact: Artifact, release_id: str) -> Need:
    """SFTP stats only: what this host still has to store."""
    # as ship() decides: the artifact is sent unless stored, unpacked unless the release is
    # there (a release whose artifact was pruned by hand gets its artifact sent again)
    stored = host.size(f"{layout.artifacts}/{artifact.stored_name}") == artifact.size
    unpacked = has_release(host, layout, release_id)
    return Need(0 if stored else artifact.size, 0 if unpacked else artifact.unpacked_size)


def preflight(host: Host, layout: Layout, artifact: Artifact, release_id: str) -> None:
    """Can this host take the artifact? Run on every app host before any upload starts, so
    a refusal changes nothing anywhere. No remote command unless space is short."""
    need = need_on(host, layout, artifact, release_id)
    if artifact.kind == "zip" and need.unpack and not any(host.exists(p) for p in UNZIP_PATHS):
        raise BluegreenError(
            f"{host.label} has no unzip (looked for {', '.join(UNZIP_PATHS)}): it is needed "
            f"to unpack {artifact.name}", host=host.label, phase="upload",
            hint="install it on every app host (Debian/Ubuntu: apt-get install unzip; "
                 "RHEL: dnf install unzip), then re-run; nothing was changed")
    if not need.total:
        return
    where = _existing_dir(host, layout.artifacts)
    free = host.free_space(where)
    if free is None or free >= need.total:
        return  # a host that cannot say is not refused: running out is still caught
    # Leftovers of interrupted runs count against us; left alone, they would refuse every
    # later deploy too, since only a deploy that gets as far as unpacking prunes them.
    host.run(commands.clean_stale(layout), timeout=120, check=False,
             says="remove stale partial uploads and release dirs left by interrupted runs")
    free = host.free_space(where)
    if free is None or free >= need.total:
        return
    measured = "" if where == layout.root else f" (measured at {where})"
    raise BluegreenError(
        f"not enough disk space on {host.label} for {artifact.name}: {layout.root} needs "
        f"{human(need.total)} ({need.describe()}), {human(free)} free{measured}",
        host=host.label, phase="upload",
        hint=f"nothing was changed (stale leftovers of interrupted runs were removed). Free "
             f"at least {human(need.total - free)} there: older releases are in "
             f"{layout.releases} (`fab releases`; keep_releases bounds how many stay), then "
             "re-run")


def _existing_dir(host: Host, path: str) -> str:
    """The deepest existing directory on the way to `path` (a first deploy creates it)."""
    while path not in ("", "/") and not host.exists(path):
        path = os.path.dirname(path)
    return path or "/"


def human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# ---------------------------------------------------------------- shipping


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
        except BaseException as exc:
            failure = _upload_failure(host, layout, artifact, tmp, exc)
            # a remove that fails too must not hide why the upload failed; pruning removes
            # the leftover later
            with contextlib.suppress(BluegreenError, OSError):
                host.remove(tmp)
            if failure is not None:
                raise failure from exc
            raise
        failpoints.hit("upload.mid")
        finalize = commands.finalize_upload(tmp, stored, artifact.checksum) + " && "
        uploaded = artifact.size
    release_dir = layout.release(release_id)
    try:
        host.run(finalize + commands.unpack(stored, release_dir, artifact.checksum, file_name,
                                            kind=artifact.kind, drop_artifact=bool(uploaded))
                 + " && " + commands.prune_releases(layout, keep, [*protected, release_id]),
                 timeout=300, hint="is the artifact a valid archive, and is there disk space?",
                 says=f"verify, unpack into {release_dir}, prune old releases")
    except CommandFailed as exc:
        full = _disk_full_unpacking(host, layout, artifact, release_dir, exc, bool(uploaded))
        if full is None:
            raise
        raise full from exc
    return uploaded


def _upload_failure(host: Host, layout: Layout, artifact: Artifact, tmp: str,
                    exc: BaseException) -> BluegreenError | None:
    """Say what a failed upload means: disk full (host and path), or the error itself
    without a traceback. Free space is measured before the partial file goes: after, the
    disk looks fine again."""
    if isinstance(exc, OSError):  # LocalHost writes with os calls
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _disk_full(host, layout, f"the upload of {artifact.name} to {tmp} ran out "
                              f"of space ({exc.strerror})", "the partial upload was removed")
        return BluegreenError(f"upload of {artifact.name} to {tmp} failed: {exc}",
                              host=host.label, phase=host.phase or "upload",
                              hint="check permissions and disk space under paths.root")
    if isinstance(exc, CommandFailed):
        # SFTP has no "disk full" status (OpenSSH's server answers a plain "Failure"): a
        # failed write with the disk at its end is one
        free = _free_quietly(host, layout.artifacts)
        if free is not None and free < FULL_BELOW:
            return _disk_full(host, layout, f"the upload of {artifact.name} to {tmp} ran out "
                              f"of space ({human(free)} free; {exc.what})",
                              "the partial upload was removed")
    return None


def _disk_full_unpacking(host: Host, layout: Layout, artifact: Artifact, release_dir: str,
                         exc: CommandFailed, uploaded: bool) -> BluegreenError | None:
    """The unpack command failed: a "disk full" error if that is why, else None."""
    output = exc.stderr or exc.what  # what: a host that kept only the message
    free = commands.parse_unpack_failure(output)
    if not (any(w in output for w in DISK_FULL_WORDS)
            or (free is not None and free < FULL_BELOW)):
        return None
    tool = [line for line in output.strip().splitlines()
            if line.strip() and not commands.UNPACK_FAILED.match(line.strip())][-4:]
    left = "its partial directory" + (" and this run's upload were" if uploaded else " was")
    return _disk_full(
        host, layout, f"cannot unpack {artifact.name} into {release_dir}"
        + (f" ({human(free)} free when it stopped)" if free is not None else "")
        + "".join(f"\n    {line}" for line in tool), f"{left} removed")


def _disk_full(host: Host, layout: Layout, what: str, cleaned: str) -> BluegreenError:
    return BluegreenError(
        f"disk full on {host.label}: {what}", host=host.label, phase=host.phase or "upload",
        hint=f"{cleaned}, so the disk is as before this deploy. Free space under "
             f"{layout.root} (older releases: {layout.releases}, `fab releases`), then re-run")


def _free_quietly(host: Host, path: str) -> int | None:
    try:
        return host.free_space(_existing_dir(host, path))
    except (BluegreenError, OSError):
        return None


def has_release(host: Host, layout: Layout, release_id: str) -> bool:
    return host.exists(f"{layout.release(release_id)}/.bluegreen-release")


def list_releases(host: Host, layout: Layout) -> list[tuple[str, int]]:
    out = host.run(commands.list_releases(layout), timeout=30, mutates=False).stdout
    return commands.parse_list_releases(out)
