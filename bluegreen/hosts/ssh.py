"""A remote host over SSH (Fabric/paramiko, imported only when one is opened): verified
host keys, one connection per run reused for every step, files over SFTP, HTTP to its
loopback through a direct-tcpip channel."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bluegreen import failpoints, httpwire
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.hosts.base import (
    Host,
    Result,
    T,
    log,
)
from bluegreen.httpwire import HttpReply


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
