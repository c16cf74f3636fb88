"""The only place that talks to a machine.

Every other module builds command strings (commands.py) or decides things (deploy.py), and
hands them to a Host. A Host runs a shell command with a timeout, copies a file, reads and
atomically writes small files, and makes an HTTP GET to a port on that machine's loopback
(through an SSH direct-tcpip channel for remote hosts, so slots never need a public port).

This module: the Host interface and what every host shares; local.py, ssh.py and
dryrun.py are the three kinds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from bluegreen import commands, httpwire, interrupts
from bluegreen.config import Config, HostSpec
from bluegreen.errors import CommandFailed
from bluegreen.httpwire import HttpReply

log = logging.getLogger("bluegreen.hosts")
# registered by the modules that prefix scripts with a helper library (commands, routers)
SHELL_LIBS: list[str] = [commands.SHELL_LIB]

T = TypeVar("T")
KILL_GRACE = 5  # seconds `timeout` waits after TERM before KILL on a remote command


@dataclass
class HostStats:
    """What one run cost on one host, for the per-host summary and the benchmarks:
    connections opened, remote commands (each one SSH round trip and a remote shell),
    file operations over SFTP (uploads included) and HTTP tunnels (direct-tcpip)."""

    connects: int = 0
    commands: int = 0
    file_ops: int = 0
    tunnels: int = 0


@dataclass(frozen=True)
class Result:
    command: str
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Host(ABC):
    """One machine. Methods raise CommandFailed (with host and phase) on failure."""

    def __init__(self, spec: HostSpec, cfg: Config) -> None:
        self.spec = spec
        self.cfg = cfg
        self.default_timeout = cfg.ssh.command_timeout
        self.phase = ""  # set by the flow so errors say where they happened
        self.stats = HostStats()

    def connect(self) -> None:  # noqa: B027 - optional: only connections need opening
        """Open the connection now (a no-op for the local machine), so that an unreachable
        host fails the run before anything changes anywhere."""

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def root(self) -> str:
        return self.cfg.root_on(self.spec)

    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            mutates: bool = True, hint: str = "", says: str = "") -> Result:
        """Run `command` under bash, bounded by `timeout` on both ends.

        `mutates` marks commands that change the machine; a dry run plans those instead,
        in the words of `says`.
        """
        del mutates, says  # used by DryRunHost
        limit = float(timeout or self.default_timeout)
        wrapped = f"timeout -k {KILL_GRACE} {limit:g} bash -c {shlex.quote(command)}"
        self.stats.commands += 1
        with interrupts.step():  # a signal waits for the command; none starts after one
            result = self._exec(wrapped, limit + KILL_GRACE + 5)
        if result.rc == 124:
            raise CommandFailed(f"command timed out after {limit:g}s: {short(command)}",
                                host=self.label, phase=self.phase, command=command, rc=124,
                                stdout=result.stdout, stderr=result.stderr,
                                hint=hint or "raise the timeout or check the host's load")
        if check and not result.ok:
            # Our scripts say what went wrong on their last stderr line: lead with it, and
            # show the command (minus the helper library) only as detail.
            said = [line for line in (result.stderr or result.stdout).strip().splitlines()
                    if line.strip()]
            headline = said[-1] if said else f"command failed (exit {result.rc})"
            detail = [*said[-5:-1], f"(exit {result.rc}) $ {short(command)}"]
            raise CommandFailed(
                headline + "".join(f"\n    {d}" for d in detail),
                host=self.label, phase=self.phase, command=command, rc=result.rc,
                stdout=result.stdout, stderr=result.stderr, hint=hint)
        return Result(command, result.rc, result.stdout, result.stderr)

    @abstractmethod
    def _exec(self, command: str, timeout: float) -> Result: ...

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to `remote` (not atomic: callers upload to a temp name)."""

    # File primitives: os calls locally, SFTP remotely. SFTP requests ride the one open
    # session, so they cost a fraction of a millisecond where a command costs a round trip
    # plus a remote shell start: state, lock, history and pidfile checks all use these.
    @abstractmethod
    def _open(self, path: str, mode: str) -> IO[bytes]: ...

    @abstractmethod
    def _mkdir(self, path: str) -> None: ...

    @abstractmethod
    def _size(self, path: str) -> int:
        """Size of the file; raises FileNotFoundError."""

    @abstractmethod
    def _rename(self, src: str, dst: str) -> None: ...

    @abstractmethod
    def _remove(self, path: str, *, directory: bool = False) -> None: ...

    @abstractmethod
    def _chmod(self, path: str, mode: int) -> None: ...

    def _fs(self, what: str, path: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise CommandFailed(f"cannot {what} {path}: {exc}", host=self.label,
                                phase=self.phase, hint="check permissions and disk space "
                                                       "under paths.root") from exc

    def exists(self, path: str) -> bool:
        try:
            self._fs("stat", path, lambda: self._size(path))
        except FileNotFoundError:
            return False
        return True

    def size(self, path: str) -> int:
        """Size in bytes, 0 when the file does not exist."""
        try:
            return self._fs("stat", path, lambda: self._size(path))
        except FileNotFoundError:
            return 0

    def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> str | None:
        """The text of a small file (from `offset`), or None when it does not exist."""
        def go() -> str:
            with self._open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read(limit).decode(errors="replace")
        try:
            return self._fs("read", path, go)
        except FileNotFoundError:
            return None

    def makedirs(self, path: str) -> None:
        if self.exists(path):  # the usual case: one stat, not one per path component
            return
        parts = [p for p in path.split("/") if p]
        current = ""
        for part in parts:
            current += "/" + part
            if not self.exists(current):
                try:
                    self._mkdir(current)
                except OSError:
                    if not self.exists(current):  # a concurrent mkdir is fine
                        raise

    def mkdir_exclusive(self, path: str) -> bool:
        """Atomically create a directory; False if it already exists (the lock primitive)."""
        self.makedirs(os.path.dirname(path))
        try:
            self._mkdir(path)
        except OSError as exc:
            if self.exists(path):
                return False
            raise CommandFailed(f"cannot create {path}: {exc}", host=self.label,
                                phase=self.phase) from exc
        return True

    def write_atomic(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write to a temp name in the same directory, then rename over `path`."""
        parent, name = os.path.split(path)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"

        def go() -> None:
            self.makedirs(parent)
            try:
                with self._open(tmp, "wb") as f:
                    self._chmod(tmp, mode)  # before the content: a secret is never readable
                    f.write(content.encode())
                self._rename(tmp, path)
            except BaseException:
                # a full disk must not leave the temp file behind: in the lock's directory
                # it would keep `rmdir` (release, `fab unlock`) from ever succeeding
                with contextlib.suppress(OSError, EOFError):
                    self._remove(tmp)
                raise
        with interrupts.step():
            self._fs("write", path, go)

    def append_line(self, path: str, line: str) -> None:
        """One append of one line (O_APPEND): concurrent writers never interleave a line."""
        def go() -> None:
            self.makedirs(os.path.dirname(path))
            with self._open(path, "ab") as f:
                f.write((line.rstrip("\n") + "\n").encode())
        with interrupts.step():
            self._fs("append to", path, go)

    def remove(self, path: str, *, directory: bool = False) -> None:
        try:
            self._fs("remove", path, lambda: self._remove(path, directory=directory))
        except FileNotFoundError:
            pass

    def free_space(self, path: str) -> int | None:
        """Bytes an unprivileged writer may still use where `path` (which exists) lives;
        None when the host cannot say. This default costs a remote command: LocalHost asks
        the kernel, SshHost asks over the open SFTP session."""
        out = self.run(commands.free_space(path), timeout=30, check=False, mutates=False)
        return commands.parse_free_space(out.stdout) if out.ok else None

    @abstractmethod
    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET", tls: httpwire.Tls | None = None) -> HttpReply:
        """An HTTP request to address:port/path as seen from this machine, over TLS when
        `tls` says how (the handshake runs here, over the same socket or channel). Raises
        OSError (ssl.SSLError included)."""

    def close(self) -> None:  # noqa: B027 - optional: only connections need closing
        """Drop the connection; a no-op for the local machine."""




def strip_libs(command: str) -> str:
    """The shell helper libraries prefixed to scripts are noise in messages and plans."""
    for lib in SHELL_LIBS:
        command = command.replace(lib, "")
    return command


def short(command: str, limit: int = 160) -> str:
    one = " ".join(strip_libs(command).split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def as_text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
