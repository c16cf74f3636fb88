"""--dry-run: reads go to the real host, changes to an overlay and a plan in words."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

from bluegreen import httpwire
from bluegreen.hosts.base import (
    Host,
    HostStats,
    Result,
    short,
    strip_libs,
)
from bluegreen.httpwire import HttpReply
from bluegreen.plan import Plan


class DryRunHost(Host):
    """Reads go to the real host; every change lands in the plan instead, and in an overlay
    that later reads see: a dry run takes the lock, writes state and checks the lock again
    exactly as a real run does, without touching the machine."""

    def __init__(self, inner: Host, plan: Plan) -> None:
        super().__init__(inner.spec, inner.cfg)
        self.inner = inner
        self.plan = plan
        self.overlay: dict[str, str | None] = {}  # path -> planned content (None: removed)

    @property
    def phase(self) -> str:  # type: ignore[override]
        return self.inner.phase

    @phase.setter
    def phase(self, value: str) -> None:
        if hasattr(self, "inner"):
            self.inner.phase = value

    @property  # type: ignore[override]
    def stats(self) -> HostStats:
        return self.inner.stats

    @stats.setter
    def stats(self, value: HostStats) -> None:
        pass  # the real host counts what a dry run really does (reads)

    def connect(self) -> None:
        self.inner.connect()

    def _plan(self, words: str, command: str = "") -> None:
        self.plan.add(self.label, words, command)

    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            mutates: bool = True, hint: str = "", says: str = "") -> Result:
        if mutates:
            shown = strip_libs(command).strip()
            self._plan(says or short(shown, 100), shown)
            return Result(command, 0, "", "")
        return self.inner.run(command, timeout=timeout, check=check, mutates=False, hint=hint)

    def _exec(self, command: str, timeout: float) -> Result:  # pragma: no cover - unused
        raise AssertionError("DryRunHost delegates run()")

    def put(self, local: Path, remote: str) -> None:
        self._plan(f"upload {local.name} ({local.stat().st_size} bytes) to {remote}")

    def _open(self, path: str, mode: str) -> IO[bytes]:
        if "r" not in mode:
            raise AssertionError("DryRunHost writes through write_atomic/append_line")
        if path in self.overlay:
            planned = self.overlay[path]
            if planned is None:
                raise FileNotFoundError(path)
            return io.BytesIO(planned.encode())
        return self.inner._open(path, mode)

    def _size(self, path: str) -> int:
        if path in self.overlay:
            planned = self.overlay[path]
            if planned is None:
                raise FileNotFoundError(path)
            return len(planned.encode())
        return self.inner._size(path)

    def _mkdir(self, path: str) -> None:
        pass

    def _rename(self, src: str, dst: str) -> None:  # pragma: no cover - write_atomic overridden
        raise AssertionError("DryRunHost writes through write_atomic")

    def _remove(self, path: str, *, directory: bool = False) -> None:
        self._plan(f"remove {path}")
        self.overlay[path] = None

    def _chmod(self, path: str, mode: int) -> None:
        pass

    def makedirs(self, path: str) -> None:
        pass

    def free_space(self, path: str) -> int | None:
        return self.inner.free_space(path)  # a read: a dry run shows a refusal too

    def mkdir_exclusive(self, path: str) -> bool:
        if self.overlay.get(path) is not None or (path not in self.overlay and self.exists(path)):
            return False
        self._plan(f"take {path}")
        self.overlay[path] = ""
        return True

    def write_atomic(self, path: str, content: str, mode: int = 0o644) -> None:
        self._plan(f"write {path} ({len(content)} bytes)")
        self.overlay[path] = content

    def append_line(self, path: str, line: str) -> None:
        self._plan(f"append a line to {path}")
        self.overlay[path] = (self.read(path) or "") + line.rstrip("\n") + "\n"

    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET", tls: httpwire.Tls | None = None) -> HttpReply:
        if method != "GET":
            self._plan(f"{method} http://{address}:{port}{path}")
            return HttpReply(200, body=b"{}")
        return self.inner.http_get(port, path, timeout=timeout, address=address,
                                   headers=headers, host_header=host_header,
                                   **({"tls": tls} if tls else {}))

    def close(self) -> None:
        self.inner.close()
