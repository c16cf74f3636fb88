"""A throwaway OpenSSH server for tests: own host key, own user key, own port.

sshd runs in the foreground (`-D -e`) under our Popen so we own its PID and its stderr
is the log. Per-connection sshd children call setsid() and leave the process group,
so `stop()` stops the whole /proc descendant tree by PID rather than signalling a group.

Logging in as root with `UsePAM no` works only when root's password field in
/etc/shadow is not locked with "!" (sshd then says "account is locked" in the log);
Debian images use "*", which is fine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from testkit.ports import free_port
from testkit.procs import (
    descendant_pids,
    log_tail,
    pid_alive,
    start_process,
    stop_pids,
)

if TYPE_CHECKING:
    import paramiko

SSHD_BINARY = "/usr/sbin/sshd"  # sshd refuses to run (re-exec) unless given an absolute path
PRIVSEP_DIR = Path("/run/sshd")


def generate_ed25519_key(path: Path, comment: str) -> Path:
    """Create an unencrypted ed25519 key pair at `path`/`path`.pub unless it exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path


def known_hosts_name(host: str, port: int) -> str:
    """The host pattern OpenSSH and paramiko look up: bare for port 22, else [host]:port."""
    return host if port == 22 else f"[{host}]:{port}"


def _public_key_fields(pub_path: Path) -> str:
    # "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA..." (known_hosts wants no comment)
    key_type, key_b64 = pub_path.read_text().split()[:2]
    return f"{key_type} {key_b64}"


def ensure_privsep_dir() -> None:
    # sshd refuses to start ("Missing privilege separation directory") without it, and
    # /run is a tmpfs on most machines, so it is gone after every boot.
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)


class TestSshd:
    """One sshd listening on host:port, optionally inside a network namespace.

    With `netns`, `host` must be an address of that namespace that is reachable from
    the root namespace (e.g. `NetnsHost.address`): readiness is probed from here, and a
    loopback address would probe the wrong machine. The port then defaults to 22.
    """

    __test__ = False  # the name starts with "Test"; keep pytest from collecting it

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        *,
        log_level: str = "ERROR",
        extra_config: Sequence[str] = (),
    ) -> None:
        if netns is not None and host.startswith("127."):
            raise ValueError(
                "with netns=, pass the namespace's routable address as host, not loopback"
            )
        self._workdir = Path(workdir).resolve()
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._host = host
        if port is not None:
            self._port = port
        elif netns is not None:
            self._port = 22  # a fresh namespace has nothing on 22; exercises bare known_hosts
        else:
            self._port = free_port(host)
        self._netns = netns
        self.log_level = log_level
        # lines appended to sshd_config, e.g. "SetEnv SHLVL=1" (the speed benchmarks use it
        # so the per-command bash skips root's ~/.bashrc)
        self.extra_config = list(extra_config)
        self._proc: subprocess.Popen[bytes] | None = None
        self._wrong_count = 0

        generate_ed25519_key(self.host_key, f"bgtest-host@{host}")
        generate_ed25519_key(self.user_key, "bgtest-user")
        self.authorized_keys.write_text(self.user_public_key.read_text())
        self.config.write_text(self.render_config())
        self.known_hosts.write_text(self.known_hosts_line() + "\n")

    # ----- paths and identities -----------------------------------------------------
    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def netns(self) -> str | None:
        return self._netns

    @property
    def user(self) -> str:
        return "root"

    @property
    def host_key(self) -> Path:
        return self._workdir / "ssh_host_ed25519_key"

    @property
    def host_public_key(self) -> Path:
        return self._workdir / "ssh_host_ed25519_key.pub"

    @property
    def user_key(self) -> Path:
        """Private key that authorized_keys accepts (pass as key_filename)."""
        return self._workdir / "id_ed25519"

    @property
    def user_public_key(self) -> Path:
        return self._workdir / "id_ed25519.pub"

    @property
    def authorized_keys(self) -> Path:
        return self._workdir / "authorized_keys"

    @property
    def config(self) -> Path:
        return self._workdir / "sshd_config"

    @property
    def pid_file(self) -> Path:
        return self._workdir / "sshd.pid"

    @property
    def log(self) -> Path:
        """sshd's stderr (`-e`), where every LogLevel message goes."""
        return self._workdir / "sshd.log"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file with exactly this server's host key under the right name."""
        return self._workdir / "known_hosts"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """paramiko/Fabric connect_kwargs that use only our key, never an agent or ~/.ssh."""
        return {
            "key_filename": str(self.user_key),
            "look_for_keys": False,
            "allow_agent": False,
        }

    def known_hosts_line(self) -> str:
        name = known_hosts_name(self._host, self._port)
        return f"{name} {_public_key_fields(self.host_public_key)}"

    def render_config(self) -> str:
        options = [
            ("Port", str(self._port)),
            ("ListenAddress", self._host),
            ("HostKey", str(self.host_key)),
            ("AuthorizedKeysFile", str(self.authorized_keys)),
            ("PidFile", str(self.pid_file)),
            ("UsePAM", "no"),
            # tmp dirs are not owned the way StrictModes demands
            ("StrictModes", "no"),
            ("PermitRootLogin", "prohibit-password"),
            ("PasswordAuthentication", "no"),
            ("KbdInteractiveAuthentication", "no"),
            # the deploy tool health-checks remote ports through direct-tcpip channels
            ("AllowTcpForwarding", "yes"),
            # parallel deploys and benchmarks open many sessions/connections at once
            ("MaxSessions", "50"),
            ("MaxStartups", "100:30:200"),
            ("LogLevel", self.log_level),
            ("Subsystem", "sftp internal-sftp"),
            ("AcceptEnv", "LANG LC_*"),
            ("PrintMotd", "no"),
            ("PrintLastLog", "no"),
            ("UseDNS", "no"),
        ]
        return "".join(f"{key} {value}\n" for key, value in options) + "".join(
            f"{line}\n" for line in self.extra_config)

    # ----- lifecycle ----------------------------------------------------------------
    def logs(self) -> str:
        return f"--- {self.log} ---\n{log_tail(self.log)}"

    def _argv(self) -> list[str]:
        argv = [SSHD_BINARY, "-D", "-e", "-f", str(self.config)]
        if self._netns is not None:
            # `ip netns exec` execs the command in place (no fork), so the PID we get is
            # sshd's own PID.
            argv = ["ip", "netns", "exec", self._netns, *argv]
        return argv

    def start(self, timeout: float = 10.0) -> TestSshd:
        if self._proc is not None and pid_alive(self._proc.pid):
            raise RuntimeError(f"sshd {self._proc.pid} is already running")
        ensure_privsep_dir()
        check = subprocess.run(
            [SSHD_BINARY, "-t", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"sshd -t rejected {self.config} (rc={check.returncode}):\n"
                f"{check.stderr}\n{self.config.read_text()}"
            )
        self._proc = start_process(self._argv(), self.log, cwd=self._workdir)
        try:
            self._wait_banner(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_banner(self, timeout: float) -> None:
        # A listening socket is not enough: sshd must also answer with its version
        # string, or the first paramiko connect can fail with "Error reading SSH
        # protocol banner".
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        last = "no attempt made"
        while True:
            if not pid_alive(self._proc.pid):
                raise RuntimeError(
                    f"sshd exited during start (rc={self._proc.poll()}) "
                    f"for {self._host}:{self._port}\n{self.logs()}"
                )
            try:
                with socket.create_connection((self._host, self._port), timeout=1.0) as sock:
                    sock.settimeout(1.0)
                    banner = b""
                    while b"\n" not in banner and len(banner) < 256:
                        chunk = sock.recv(256)
                        if not chunk:
                            break
                        banner += chunk
                if banner.startswith(b"SSH-"):
                    return
                last = f"unexpected banner {banner!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"sshd on {self._host}:{self._port} sent no SSH banner within "
                    f"{timeout:.1f}s (last: {last})\n{self.logs()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener and every per-connection child it has, by PID."""
        if self._proc is None:
            return
        pid = self._proc.pid
        stop_pids([pid, *descendant_pids(pid)], timeout)
        self._proc = None

    # ----- clients --------------------------------------------------------------------
    def wrong_known_hosts(self, path: Path) -> Path:
        """Write a known_hosts at `path` naming this host:port with a different key.

        A client that verifies host keys must refuse to connect with it.
        """
        self._wrong_count += 1
        other = generate_ed25519_key(
            self._workdir / f"wrong_host_key_{self._wrong_count}", "bgtest-impostor"
        )
        name = known_hosts_name(self._host, self._port)
        path.write_text(f"{name} {_public_key_fields(other.with_suffix('.pub'))}\n")
        return path

    def connect(
        self, *, known_hosts: Path | None = None, timeout: float = 10.0
    ) -> paramiko.SSHClient:
        """A paramiko client that verifies the host key (RejectPolicy), logged in as root."""
        import paramiko  # deferred: only clients need it, the server helpers do not

        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts or self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self._host,
                port=self._port,
                username=self.user,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                **self.connect_kwargs,
            )
        except BaseException:
            client.close()
            raise
        return client

    def ssh_argv(self, command: str) -> list[str]:
        """An OpenSSH client command line equivalent to `connect()` + exec `command`."""
        return [
            "ssh",
            "-F",
            os.devnull,
            "-i",
            str(self.user_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(self._port),
            f"{self.user}@{self._host}",
            command,
        ]

    def scp_argv(self, local: Path, remote: str) -> list[str]:
        """OpenSSH `scp` of `local` to `remote` on this server, the same keys as `ssh_argv`."""
        return ["scp", "-q", "-F", os.devnull, "-i", str(self.user_key), "-o",
                "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.known_hosts}", "-o",
                "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-P", str(self._port),
                str(local), f"{self.user}@{self._host}:{remote}"]

    def __enter__(self) -> TestSshd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
