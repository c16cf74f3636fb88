"""Where things live on a host, and what a release is called. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


@dataclass(frozen=True)
class Layout:
    """Where things live on a host, under {paths.root}/{app}."""

    root: str

    @property
    def artifacts(self) -> str:
        return f"{self.root}/artifacts"

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    def slot_dir(self, slot: str) -> str:
        return f"{self.root}/slots/{slot}"

    def pidfile(self, slot: str) -> str:
        return f"{self.slot_dir(slot)}/pid"

    def logfile(self, slot: str) -> str:
        return f"{self.slot_dir(slot)}/app.log"

    @property
    def state(self) -> str:
        return f"{self.root}/state.json"

    @property
    def history(self) -> str:
        return f"{self.root}/history.jsonl"

    @property
    def lock(self) -> str:
        return f"{self.root}/lock"

    @property
    def journal(self) -> str:
        return f"{self.root}/intent.json"


def is_tarball(name: str) -> bool:
    return name.lower().endswith(TARBALL_SUFFIXES)


def artifact_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in TARBALL_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return ""


def release_id(version: str, checksum: str) -> str:
    """Same artifact and version -> same id, so re-running a deploy converges on one dir."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", version).strip("._-")[:40]
    return f"{safe}-{checksum[:12]}" if safe else checksum[:12]
