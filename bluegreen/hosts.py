"""The only place that talks to a machine.

Every other module builds command strings (commands.py) or decides things (deploy.py), and
hands them to a Host. A Host runs a shell command with a timeout, copies a file, reads and
atomically writes small files, and makes an HTTP GET to a port on that machine's loopback
(through an SSH direct-tcpip channel for remote hosts, so slots never need a public port).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import socket
import subprocess
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from bluegreen import commands, failpoints, httpwire, interrupts
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.httpwire import HttpReply
from bluegreen.plan import Plan

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
            raise CommandFailed(f"command timed out after {limit:g}s: {_short(command)}",
                                host=self.label, phase=self.phase, command=command, rc=124,
                                stdout=result.stdout, stderr=result.stderr,
                                hint=hint or "raise the timeout or check the host's load")
        if check and not result.ok:
            # Our scripts say what went wrong on their last stderr line: lead with it, and
            # show the command (minus the helper library) only as detail.
            said = [line for line in (result.stderr or result.stdout).strip().splitlines()
                    if line.strip()]
            headline = said[-1] if said else f"command failed (exit {result.rc})"
            detail = [*said[-5:-1], f"(exit {result.rc}) $ {_short(command)}"]
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


class LocalHost(Host):
    """This machine, through subprocess: the demo, and single-box setups."""

    def _exec(self, command: str, timeout: float) -> Result:
        try:
            proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            return Result(command, 124, _text(exc.stdout), _text(exc.stderr))
        return Result(command, proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: str) -> None:
        # A plain streaming copy; os.sendfile keeps a 100 MB artifact out of Python memory.
        with open(local, "rb") as src, open(remote, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                offset += os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)

    def _open(self, path: str, mode: str) -> IO[bytes]:
        return open(path, mode)

    def _mkdir(self, path: str) -> None:
        os.mkdir(path)

    def _size(self, path: str) -> int:
        return os.stat(path).st_size

    def _rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _remove(self, path: str, *, directory: bool = False) -> None:
        (os.rmdir if directory else os.remove)(path)

    def _chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def free_space(self, path: str) -> int | None:
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET", tls: httpwire.Tls | None = None) -> HttpReply:
        sock = socket.create_connection((address, port), timeout=timeout)
        sock.settimeout(timeout)
        stream = httpwire.TlsStream(sock, tls) if tls else sock
        return httpwire.exchange(stream, httpwire.build_request(path, host_header, headers,
                                                                method))


class SshHost(Host):
    """A remote machine over Fabric/paramiko, with host keys verified against known_hosts."""

    def __init__(self, spec: HostSpec, cfg: Config) -> None:
        super().__init__(spec, cfg)
        self._conn = None
        self._sftp = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        self.sftp()  # the connection, then the file channel every flow uses

    @property
    def conn(self):
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def _connect(self):
        import paramiko
        from fabric import Connection

        ssh = self.cfg.ssh
        key = str(self.cfg.resolve(ssh.key_file)) if ssh.key_file else None
        conn = Connection(
            host=self.spec.address,
            user=self.spec.user or ssh.user or None,
            port=self.spec.port or ssh.port,
            connect_timeout=ssh.connect_timeout,
            connect_kwargs={"key_filename": [key]} if key else {},
        )
        # Fabric installs AutoAddPolicy and never reads known_hosts (FIELD-NOTES): we replace
        # both before open(), so a changed or unknown host key stops the deploy.
        known = self.cfg.resolve(ssh.known_hosts)
        self.stats.connects += 1
        if ssh.accept_unknown_hosts:
            log.warning("host %s: ssh.accept_unknown_hosts = true: unknown host keys are "
                        "accepted without verification", self.label)
            conn.client.set_missing_host_key_policy(paramiko.WarningPolicy())
        else:
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if known.exists():
            conn.client.load_host_keys(str(known))
        elif not ssh.accept_unknown_hosts:
            raise BluegreenError(
                f"known_hosts file {known} does not exist, so the host key of "
                f"{self.spec.address} cannot be verified",
                host=self.label, phase=self.phase or "connect",
                hint=f"verify the host's fingerprint, then: ssh-keyscan -p "
                     f"{self.spec.port or ssh.port} {self.spec.address} >> {known}")
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise BluegreenError(
                f"host key of {self.spec.address} does NOT match {known} (got "
                f"{exc.key.get_name()} {exc.key.get_fingerprint().hex()}): possible "
                "man-in-the-middle, or the host was reinstalled",
                host=self.label, phase=self.phase or "connect",
                hint="confirm the new key out of band, then replace its line in known_hosts"
            ) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise BluegreenError(
                    f"host key of {self.spec.address} is unknown: not in {known}",
                    host=self.label, phase=self.phase or "connect",
                    hint=f"verify its fingerprint, then: ssh-keyscan -p "
                         f"{self.spec.port or ssh.port} {self.spec.address} >> {known} "
                         "(or set ssh.accept_unknown_hosts = true, which is logged)") from exc
            raise BluegreenError(f"SSH to {self.spec.address} failed: {exc}", host=self.label,
                                 phase=self.phase or "connect",
                                 hint="check ssh.user, ssh.key_file and that sshd runs") from exc
        except (OSError, EOFError) as exc:
            where = f"{self.spec.address}:{self.spec.port or ssh.port}"
            if self.stats.connects > 1:
                # it answered earlier in this run: the address is right, the host went away
                raise BluegreenError(f"SSH connection lost: {where} answered earlier in this "
                                     f"run but not now: {exc}",
                                     host=self.label, phase=self.phase or "connect",
                                     hint="wait until the host answers again, then "
                                          "re-run: every phase converges") from exc
            raise BluegreenError(f"cannot reach {where}: {exc}",
                                 host=self.label, phase=self.phase or "connect",
                                 hint="check the address, the port and the network") from exc
        conn.transport.set_keepalive(ssh.keepalive)  # ssh_config's ServerAliveInterval is ignored
        # paramiko leaves Nagle on (OpenSSH's client turns it off): every small request
        # that follows another unacknowledged one (a channel open, an exec, a health probe,
        # an SFTP open) then waits for the peer's delayed ACK, ~40 ms each.
        with contextlib.suppress(OSError, AttributeError):  # a ProxyCommand is no socket
            conn.transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _exec(self, command: str, timeout: float) -> Result:
        from invoke.exceptions import CommandTimedOut

        try:
            r = self.conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except CommandTimedOut as exc:
            return Result(command, 124, exc.result.stdout, exc.result.stderr)
        except BluegreenError:
            raise
        except Exception as exc:
            self._drop()
            raise CommandFailed(
                f"SSH connection lost while running a command: {type(exc).__name__}: {exc}",
                host=self.label, phase=self.phase, command=command,
                hint="check the network to the host, then re-run: every phase converges"
            ) from exc
        return Result(command, r.exited, r.stdout, r.stderr)

    def sftp(self):
        conn = self.conn
        with self._lock:
            if self._sftp is None:
                self._sftp = conn.client.open_sftp()
                # a black-holed link would otherwise hang a file operation for as long as
                # TCP retries (~15 min), with the lock held
                self._sftp.get_channel().settimeout(self.cfg.ssh.command_timeout)
            return self._sftp

    # OpenSSH's sftp-server accepts writes up to 255 KiB; paramiko's default 32 KiB costs
    # Python work per packet. bench/prototypes/sftp_write_size.py measured 128 KiB
    # pipelined writes fastest (0.95x scp's transfer time, against 0.59x at 32 KiB and
    # 0.85x at 255 KiB).
    OPENSSH_MAX_WRITE = 131072

    def put(self, local: Path, remote: str) -> None:
        """Stream the file in large pipelined writes (never all in memory), check the size."""
        self.stats.file_ops += 1
        try:
            sftp = self.sftp()
            banner = (self.conn.transport.remote_version or "").lower()
            chunk = self.OPENSSH_MAX_WRITE if "openssh" in banner else 32768
            size = local.stat().st_size
            with open(local, "rb") as src, sftp.open(remote, "wb") as dst:
                dst.set_pipelined(True)  # don't wait for each write's ack
                dst.MAX_REQUEST_SIZE = chunk
                for block in iter(lambda: src.read(chunk), b""):
                    dst.write(block)
                    failpoints.hit("upload.writing")  # the fault suite: a link cut mid-file
            if sftp.stat(remote).st_size != size:
                raise OSError(f"size mismatch after upload (expected {size} bytes)")
        except Exception as exc:
            self._drop()
            raise CommandFailed(f"upload of {local} to {remote} failed: {exc}", host=self.label,
                                phase=self.phase, hint="check disk space and the connection, "
                                                       "then re-run") from exc

    def _sftp_call(self, fn: Callable[[Any], T]) -> T:
        self.stats.file_ops += 1
        try:
            return fn(self.sftp())
        except (OSError, EOFError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a real answer from the server (ENOENT, EACCES, ...)
            if isinstance(exc, OSError) and str(exc) in ("Failure", "Permission denied"):
                raise
            self._drop()
            raise CommandFailed(f"SSH connection lost during a file operation: "
                                f"{type(exc).__name__}: {exc}",
                                host=self.label, phase=self.phase,
                                hint="check the connection, then re-run: every phase "
                                     "converges") from exc

    def _open(self, path: str, mode: str) -> IO[bytes]:
        f = self._sftp_call(lambda sftp: sftp.open(path, mode.replace("b", "")))
        if "r" in mode:
            f.prefetch()  # pipeline reads instead of one round trip per 32 KB
        return f  # type: ignore[no-any-return]

    def _mkdir(self, path: str) -> None:
        self._sftp_call(lambda sftp: sftp.mkdir(path))

    def _size(self, path: str) -> int:
        return int(self._sftp_call(lambda sftp: sftp.stat(path)).st_size or 0)

    def _rename(self, src: str, dst: str) -> None:
        self._sftp_call(lambda sftp: sftp.posix_rename(src, dst))

    def _remove(self, path: str, *, directory: bool = False) -> None:
        self._sftp_call(lambda sftp: (sftp.rmdir if directory else sftp.remove)(path))

    def _chmod(self, path: str, mode: int) -> None:
        self._sftp_call(lambda sftp: sftp.chmod(path, mode))

    STATVFS = "statvfs@openssh.com"  # OpenSSH's sftp-server has answered it since 5.1

    def free_space(self, path: str) -> int | None:
        """Over the open SFTP session (no remote command, so a deploy stays at its 4
        commands per host); one `stat -f` command only where the server lacks the extension.
        paramiko has no call for it, so the request goes through its generic one, the way
        paramiko itself sends posix-rename@openssh.com."""
        from paramiko.message import Message
        from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

        def ask(sftp: Any) -> tuple[int, Message] | None:
            try:
                return sftp._request(CMD_EXTENDED, self.STATVFS, path)  # type: ignore[no-any-return]
            except OSError as exc:
                if exc.errno is None and "unsupported" in str(exc).lower():
                    return None  # an answer, not a broken connection: ask the shell
                raise
        try:
            answer = self._sftp_call(ask)
        except OSError:
            return None  # no such path, or not allowed: nothing to measure
        except (AttributeError, TypeError):  # a paramiko without the generic request
            answer = None
        if answer is None or answer[0] != CMD_EXTENDED_REPLY:
            return super().free_space(path)
        msg = answer[1]
        # struct statvfs as uint64s: bsize, frsize, blocks, bfree, bavail, files, ...
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return bavail * frsize

    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET", tls: httpwire.Tls | None = None) -> HttpReply:
        import paramiko

        self.stats.tunnels += 1
        try:
            chan = self.conn.transport.open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ConnectionRefusedError(f"{address}:{port} on {self.label}: {exc}") from exc
        except paramiko.SSHException as exc:
            raise ConnectionError(f"tunnel to {address}:{port} on {self.label}: {exc}") from exc
        chan.settimeout(timeout)
        stream = httpwire.TlsStream(chan, tls) if tls else chan
        return httpwire.exchange(stream, httpwire.build_request(path, host_header, headers,
                                                                method))

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken; nothing to save
                pass

    def close(self) -> None:
        self._drop()


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
            shown = _strip_libs(command).strip()
            self._plan(says or _short(shown, 100), shown)
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


def open_host(spec: HostSpec, cfg: Config) -> Host:
    return LocalHost(spec, cfg) if spec.is_local else SshHost(spec, cfg)


def _strip_libs(command: str) -> str:
    """The shell helper libraries prefixed to scripts are noise in messages and plans."""
    for lib in SHELL_LIBS:
        command = command.replace(lib, "")
    return command


def _short(command: str, limit: int = 160) -> str:
    one = " ".join(_strip_libs(command).split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
