"""A real systemd app host for tests: Debian 12 booted with systemd as its PID 1.

Our machines do not run systemd as PID 1, so the systemd backend gets its own: a Debian
bookworm root filesystem (debootstrap, built once and cached under ROOTFS_DIR with a
versioned stamp) booted by `systemd-nspawn --boot`. The cached tree is never written:
`--overlay` puts an upper directory of this host's own (under its work dir, removed by
`stop()`) over it, so a `reboot()` (halt, boot again) keeps what the tests did, as a real
disk would, and nothing outlives the host.

The container shares the host's network (no veth, no `ip netns`: other tests own the
198.18.x ranges), so its sshd and the app's slots listen on free loopback ports that the
host's nginx reaches directly. Inside it, bluegreen's documented non-root setup for the
systemd backend (README, "Non-root deploy user"): user `deploy`, `/srv/bluegreen` and
`/srv/bluegreen/units` owned by it, the unit linked once into /etc/systemd/system, and the
README's sudoers line. The test logs in as `deploy` over SSH with a host key it generated
and pins; it inspects what runs through `nsenter` + the container's own `systemctl`.

`stop()` sends SIGTERM to the systemd-nspawn process we started (by its PID): nspawn asks
the container's systemd to halt, which stops every unit; SIGKILL after a bounded wait.
`reboot()` halts it the same way and boots the same tree again (same sshd port and keys).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from testkit.ports import free_port, port_open
from testkit.procs import child_pids, log_tail, pid_alive, start_process, stop_pids
from testkit.sshd import generate_ed25519_key, known_hosts_name

# Bump when PACKAGES or _customize change: a cached tree with another stamp is rebuilt.
ROOTFS_VERSION = "1"
ROOTFS_DIR = Path(os.environ.get("BLUEGREEN_SYSTEMD_ROOTFS",
                                 "/var/cache/bluegreen-test/systemd-root"))
SUITE = "bookworm"
MIRROR = os.environ.get("BLUEGREEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "curl",
            "procps", "iproute2")
DEPLOY_USER = "deploy"
APP_ROOT = "/srv/bluegreen"  # paths.root on the container (README's non-root setup)
UNIT_DIR = f"{APP_ROOT}/units"  # process.systemd_unit_dir, owned by deploy
CONF_IN_CONTAINER = "/etc/bluegreen-test"  # the per-boot sshd files, bound in read-only
SSHD_UNIT = "bluegreen-test-sshd.service"
# Units a throwaway test host has no use for; masked so they cannot slow a boot down or,
# with the host's network shared, grab port 22 (ssh.service) on the host.
MASKED = ("ssh.service", "ssh.socket", "apt-daily.timer", "apt-daily-upgrade.timer",
          "e2scrub_all.timer", "dpkg-db-backup.timer", "fstrim.timer",
          "console-getty.service", "getty@tty1.service", "systemd-networkd-wait-online.service")
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "ssh-keygen")

_SSHD_UNIT_TEXT = f"""\
# installed by testkit/systemd_host.py: sshd for bluegreen's tests on a free port, with
# the config, host key and authorized keys of one boot bound in at {CONF_IN_CONTAINER}
[Unit]
Description=sshd for bluegreen's systemd-backend tests
ConditionPathExists={CONF_IN_CONTAINER}/sshd_config
After=network.target

[Service]
ExecStart=/usr/sbin/sshd -D -e -f {CONF_IN_CONTAINER}/sshd_config
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
"""


def unavailable_reason() -> str | None:
    """None when this machine can boot the container, else exactly why it cannot."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn and debootstrap run as root)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            package = {"systemd-nspawn": "systemd-container"}.get(tool, tool)
            return (f"`{tool}` is not installed: apt-get install {package} "
                    "(scripts/install-system-deps.sh installs it)")
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup: systemd cannot run in a container"
    return None


def rootfs_ready(root: Path = ROOTFS_DIR) -> bool:
    stamp = root / ".bluegreen-rootfs"
    return stamp.exists() and stamp.read_text().strip() == _stamp_text()


def _stamp_text() -> str:
    return f"{ROOTFS_VERSION} {SUITE} {' '.join(PACKAGES)}"


def ensure_rootfs(root: Path = ROOTFS_DIR, log: Path | None = None) -> float:
    """Build the cached tree unless its stamp matches; seconds spent building (0: cached).

    Built next to its final place and renamed into it, under a lock, so a run that is cut
    short or a second run at the same time never sees half a tree.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if rootfs_ready(root):
            return 0.0
        began = time.monotonic()
        tmp = root.parent / f".{root.name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log = log or root.parent / f"{root.name}.build.log"
        try:
            _run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                         SUITE, str(tmp), MIRROR], log, timeout=1200,
                        what=f"debootstrap {SUITE} from {MIRROR}")
            _customize(tmp, log)
            (tmp / ".bluegreen-rootfs").write_text(_stamp_text() + "\n")
            if root.exists():
                shutil.rmtree(root)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return time.monotonic() - began


def _customize(tree: Path, log: Path) -> None:
    """What every boot shares: the deploy user, our sshd unit, the masked units."""
    script = "\n".join([
        "set -e",
        # a key-only account: '*' (not '!') so sshd without PAM does not call it locked
        f"id -u {DEPLOY_USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "
        f"{DEPLOY_USER}",
        f"usermod -p '*' {DEPLOY_USER}",
        # every boot gets its own host key (bound in), so none is baked into the tree
        "rm -f /etc/ssh/ssh_host_*",
        *(f"ln -sfn /dev/null /etc/systemd/system/{unit}" for unit in MASKED),
        "mkdir -p /etc/systemd/system/multi-user.target.wants",
        f"ln -sfn /etc/systemd/system/{SSHD_UNIT} "
        f"/etc/systemd/system/multi-user.target.wants/{SSHD_UNIT}",
        # the host's hostname came along with debootstrap; the container names itself
        "rm -f /etc/hostname",
    ])
    (tree / "etc/systemd/system" / SSHD_UNIT).write_text(_SSHD_UNIT_TEXT)
    _run_logged(["chroot", str(tree), "/bin/sh", "-c", script], log, timeout=120,
                what="customize the root filesystem")


def _run_logged(argv: Sequence[str], log: Path, timeout: float, what: str) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); its log, {log}:\n"
                           f"{log_tail(log)}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sudoers_text(app: str, user: str = DEPLOY_USER) -> str:
    """The README's sudoers line for the systemd backend, word for word, for `app`."""
    units = [f"{app}@{slot}.service" for slot in ("blue", "green")]
    rules = ["/usr/bin/systemctl daemon-reload"]
    for unit in units:
        rules += [f"/usr/bin/systemctl {verb} {unit}"
                  for verb in ("restart", "stop", "enable", "disable")]
    return f"{user} ALL=(root) NOPASSWD: {', '.join(rules)}\n"


class SystemdHost:
    """One booted container; `start()` boots and prepares it, `stop()` halts it."""

    def __init__(self, app: str = "demo", root: Path = ROOTFS_DIR) -> None:
        self.app = app
        self.rootfs = root
        # short: nspawn's machine name and sshd's paths stay well within their limits
        self.work = Path(tempfile.mkdtemp(prefix="bgsd-", dir="/tmp"))
        self.etc = self.work / "etc"  # bound at CONF_IN_CONTAINER
        self.upper = self.work / "upper"  # the overlay's writable layer: the "disk"
        self.etc.mkdir(mode=0o755)
        self.etc.chmod(0o755)  # deploy's sshd child reads authorized_keys through it
        self.machine = f"bgsd{os.getpid()}"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's PID 1 (systemd), as the host sees it
        self.boot_seconds = 0.0

    # ----- keys, for bluegreen's [ssh] ------------------------------------------------
    @property
    def user_key(self) -> Path:
        return self.work / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.work / "known_hosts"

    @property
    def log(self) -> Path:
        return self.work / "nspawn.log"

    def _write_ssh_files(self) -> None:
        host_key = generate_ed25519_key(self.etc / "ssh_host_ed25519_key", "bgsd-host")
        host_key.chmod(0o600)
        generate_ed25519_key(self.user_key, "bgsd-deploy")
        authorized = self.etc / "authorized_keys"
        authorized.write_text(self.user_key.with_suffix(".pub").read_text())
        authorized.chmod(0o644)
        (self.etc / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1",
            f"HostKey {CONF_IN_CONTAINER}/ssh_host_ed25519_key",
            f"AuthorizedKeysFile {CONF_IN_CONTAINER}/authorized_keys",
            # root too: the systemd backend's other documented setup (root, no sudo)
            f"AllowUsers {DEPLOY_USER} root", "PermitRootLogin prohibit-password", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PidFile none", "Subsystem sftp internal-sftp", "LogLevel INFO", ""]))
        key_type, key_b64 = (self.etc / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(
            f"{known_hosts_name('127.0.0.1', self.port)} {key_type} {key_b64}\n")

    # ----- lifecycle ------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> SystemdHost:
        self._write_ssh_files()
        self.upper.mkdir(mode=0o755)
        try:
            self._boot(timeout)
            self._prepare()
        except BaseException:
            self.stop()
            raise
        return self

    def reboot(self, timeout: float = 90.0) -> float:
        """Halt the container (every unit stopped, as on a shutdown) and boot it again
        from the same disk; nothing of the README's once-per-host setup is redone. Returns
        the seconds from halt to sshd answering."""
        began = time.monotonic()
        self._halt()
        try:
            self._boot(timeout)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - began

    def _boot(self, timeout: float) -> None:
        began = time.monotonic()
        # --register=no / --keep-unit: there is no systemd on the host to register with or
        # to ask for a scope; --console=passive: no getty waiting on our log file.
        self.proc = start_process(
            ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.rootfs}",
             f"--machine={self.machine}", "--register=no", "--keep-unit",
             f"--overlay={self.rootfs}:{self.upper}:/", "--console=passive",
             f"--bind-ro={self.etc}:{CONF_IN_CONTAINER}"], self.log)
        self.leader = self._wait_leader(began + timeout)
        state = self._wait_booted(began + timeout)
        if state not in ("running", "degraded"):
            failed = self.systemctl("--failed").stdout
            raise RuntimeError(f"the container's systemd says {state!r}:\n{failed}\n"
                               f"{log_tail(self.log)}")
        self._wait_sshd(began + timeout)
        self.boot_seconds = time.monotonic() - began

    def _wait_leader(self, deadline: float) -> int:
        """nspawn's child that is PID 1 in its own PID namespace, once it runs systemd."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if not pid_alive(self.proc.pid):
                raise RuntimeError(f"systemd-nspawn exited ({self.proc.poll()}):\n"
                                   f"{log_tail(self.log)}")
            for pid in child_pids(self.proc.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                nspid = next((line.split()[1:] for line in status.splitlines()
                              if line.startswith("NSpid:")), [])
                if nspid[-1:] == ["1"] and comm == "systemd":
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"no systemd came up in the container:\n{log_tail(self.log)}")

    def _wait_booted(self, deadline: float) -> str:
        """The boot's end as the container's systemd reports it. Right after nspawn execs
        it, systemctl cannot reach it yet and says "offline" at once, even with --wait."""
        state = "offline"
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            state = self.sh("systemctl is-system-running --wait", check=False,
                            timeout=left).stdout.strip()
            if state not in ("offline", "", "initializing", "starting"):
                return state
            time.sleep(0.1)
        return state

    def _prepare(self) -> None:
        """The README's once-per-host root steps for a non-root systemd deploy."""
        sudoers = sudoers_text(self.app)
        self.sh("\n".join([
            "set -e",
            # as on any Debian host: else sudo warns "unable to resolve host" on every call
            'grep -qw "$(hostname)" /etc/hosts || echo "127.0.1.1 $(hostname)" >> /etc/hosts',
            f"install -d -o {DEPLOY_USER} -m 0755 {APP_ROOT} {UNIT_DIR}",
            f"ln -sfn {UNIT_DIR}/{self.app}@.service /etc/systemd/system/",
            f"printf %s {shlex.quote(sudoers)} > /etc/sudoers.d/bluegreen.tmp",
            "chmod 0440 /etc/sudoers.d/bluegreen.tmp",
            "visudo -cf /etc/sudoers.d/bluegreen.tmp >/dev/null",
            "mv /etc/sudoers.d/bluegreen.tmp /etc/sudoers.d/bluegreen",
        ]))

    def _wait_sshd(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        status = self.sh(f"systemctl status --no-pager {SSHD_UNIT}", check=False).stdout
        raise RuntimeError(f"the container's sshd is not listening on {self.port}:\n{status}")

    def stop(self, timeout: float = 30.0) -> None:
        """Halt the container and remove its disk and keys."""
        try:
            self._halt(timeout)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _halt(self, timeout: float = 30.0) -> None:
        """SIGTERM to nspawn (the container halts, every unit stops), SIGKILL if it hangs;
        then the container's PID 1 must be gone too."""
        if self.proc is not None:
            stop_pids([self.proc.pid], timeout=timeout)
            self.proc = None
        if self.leader is not None:
            leader, self.leader = self.leader, None
            if pid_alive(leader):
                stop_pids([leader], timeout=5.0)
            assert not pid_alive(leader), f"the container's systemd {leader} survived"

    # ----- looking inside -------------------------------------------------------------
    def sh(self, script: str, *, check: bool = True, timeout: float = 30.0
           ) -> subprocess.CompletedProcess[str]:
        """Run `script` as root in the container (its mount, PID, IPC, UTS and cgroup
        namespaces), with the container's own binaries."""
        assert self.leader is not None, "the container is not running"
        proc = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--pid",
             "--cgroup", "--", "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and proc.returncode != 0:
            raise RuntimeError(f"in the container, exit {proc.returncode}: {script}\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.sh(f"systemctl --no-pager {shlex.join(args)}", check=check)

    def is_active(self, unit: str) -> str:
        """What `systemctl is-active UNIT` prints: active, inactive, failed, ..."""
        return self.systemctl("is-active", unit).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)}", check=False).stdout


def main() -> int:
    """`python -m testkit.systemd_host`: build the cached tree now (`make systemd-host`),
    so that the first test run does not pay for it; then boot it once and say how long
    each step took."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run a systemd host here: {reason}")
        return 1
    try:
        built = ensure_rootfs()
        host = SystemdHost().start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"FAILED: {exc}")
        return 1
    try:
        version = host.sh("systemctl --version").stdout.splitlines()[0]
    finally:
        host.stop()
    print(f"root filesystem {ROOTFS_DIR}: " + (f"built in {built:.1f}s" if built else "cached"))
    print(f"booted {version} as PID 1 in {host.boot_seconds:.2f}s, halted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
