"""Ship an artifact to a host once, verified by checksum, and unpack it into releases/<id>."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from bluegreen import commands
from bluegreen.commands import Layout, q
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host


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
        return self.checksum + commands.artifact_suffix(self.name)


def inspect(path: Path) -> Artifact:
    if not path.is_file():
        raise BluegreenError(f"artifact {path} not found (or not a file)", host="local",
                             phase="upload", hint="build it first, or pass --artifact PATH")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Artifact(path, digest.hexdigest(), path.stat().st_size)


@dataclass(frozen=True)
class Shipped:
    release_dir: str
    uploaded_bytes: int
    unpacked: bool


def ship(host: Host, layout: Layout, artifact: Artifact, release_id: str,
         file_name: str) -> Shipped:
    host.run(commands.ensure_layout(layout), timeout=30)
    stored = f"{layout.artifacts}/{artifact.stored_name}"
    remote_sum = host.run(commands.file_checksum(stored), timeout=120, mutates=False).stdout
    uploaded = 0
    if remote_sum.strip() != artifact.checksum:
        tmp = f"{layout.artifacts}/.upload-{uuid.uuid4().hex[:8]}"
        try:
            host.put(artifact.path, tmp)
            host.run(commands.finalize_upload(tmp, stored, artifact.checksum), timeout=300,
                     hint="the upload was corrupted in transit; re-run the deploy")
        except BaseException:
            host.run(f"rm -f -- {q(tmp)}", timeout=30, check=False)
            raise
        uploaded = artifact.size
    release_dir = layout.release(release_id)
    out = host.run(commands.unpack(stored, release_dir, artifact.checksum, file_name),
                   timeout=300, hint="is the artifact a valid tarball, and is there disk space?")
    return Shipped(release_dir, uploaded, "unpacked" in out.stdout)


def has_release(host: Host, layout: Layout, release_id: str) -> bool:
    marker = f"{layout.release(release_id)}/.bluegreen-release"
    return host.run(f"test -f {q(marker)}", timeout=30, check=False, mutates=False).ok


def prune(host: Host, layout: Layout, keep: int, protected: list[str]) -> list[str]:
    out = host.run(commands.prune_releases(layout, keep, protected), timeout=120,
                   check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def list_releases(host: Host, layout: Layout) -> list[tuple[str, int]]:
    out = host.run(commands.list_releases(layout), timeout=30, mutates=False).stdout
    rows = []
    for line in out.splitlines():
        name, _, mtime = line.partition(" ")
        if name:
            rows.append((name, int(mtime or 0)))
    return rows
