"""A fleet on this machine: app hosts and traffic hosts, each a network namespace with its own
mount namespace and a real sshd, reached as a NON-ROOT deploy user whose sudo rights are
exactly what bluegreen needs, as on real servers.

Topology: one Linux bridge `bf<pid>b<k>` in the root namespace holding 198.19.<k>.1/24;
every host is a namespace `bgfl-<pid>-<k>-<label>` on it with 198.19.<k>.<n>/24 on its
`eth0` (a veth whose root end `bf<pid>v<n>` is a bridge port). Hosts reach each other over
the bridge (nginx on a traffic host proxies to the app hosts) with no forwarding or NAT,
and the root namespace (the tests, the load client, `fab`) reaches every host. <k> is
unique on the machine while the fleet lives (checked by address), <pid> is ours: every
name is unique per test run, and a run killed with SIGKILL is cleaned up by the next one
(`cleanup_stale`).

Each host's sshd is started as `ip netns exec NS unshare --mount --propagation private
sh boot.sh`, and boot.sh bind-mounts the host's own directories before it execs sshd, so
every host sees its own tree at the same paths (one bluegreen.toml for the whole fleet):

    <work>/mnt/srv     paths.root, the host's own <work>/hosts/<label>/srv
    /etc/nginx         (nginx hosts) <work>/hosts/<label>/etc-nginx: nginx.conf, and
                       bluegreen/ owned by the deploy user (nginx.target goes there)
    /var/log/nginx     (nginx hosts) <work>/hosts/<label>/log-nginx: error log, pid, temp

nginx runs in the same namespaces as its host's sshd (`nsenter --target <sshd pid>
--mount --net`), as root, with the stock command lines: the deploy user runs exactly
`sudo -n /usr/sbin/nginx -t` and `sudo -n /usr/sbin/nginx -s reload`, allowed by
/etc/sudoers.d/bgfleet-<pid>-<k> (SUDOERS_RULES, the README's lines).

Everything is stopped by PID (testkit.procs) and every namespace, veth, bridge and the
sudoers file are deleted in `close()`, which runs even when a start failed half-way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from testkit.netns import _ip, list_namespaces, netns_available
from testkit.nginx import LUA_MODULES, NGINX_MODULES_DIR, TEMP_PATHS, nginx_binary
from testkit.procs import descendant_pids, pid_alive, start_process, stop_pids, wait_until
from testkit.project import Project
from testkit.sshd import SSHD_BINARY, TestSshd, generate_ed25519_key

DEPLOY_USER = "bgdeploy"  # a real local user; README's examples call it `deploy`
NS_PREFIX = "bgfl-"
NETWORK = "198.19"
SUDOERS_DIR = Path("/etc/sudoers.d")
SUDOERS_PREFIX = "bgfleet-"
NGINX = "/usr/sbin/nginx"
# what bluegreen runs through sudo on a traffic host (sudo.traffic = ["nginx"])
SUDOERS_RULES = (f"{NGINX} -t", f"{NGINX} -s reload")
_NS_RE = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-(\d+)-(.+)$")
_LINK_RE = re.compile(r"^bf(\d+)[bv]\d+$")
_SUDOERS_RE = re.compile(rf"^{re.escape(SUDOERS_PREFIX)}(\d+)-\d+$")


def fleet_available() -> tuple[bool, str]:
    """(True, "") or (False, the exact reason this machine cannot run a fleet)."""
    ok, reason = netns_available()
    if not ok:
        return False, f"network namespaces unavailable: {reason}"
    for tool in ("sudo", "unshare", "nsenter", "visudo", "useradd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return False, f"`{tool}` is not installed (make setup installs sudo)"
    for module in LUA_MODULES:
        if not (NGINX_MODULES_DIR / module).exists():
            return False, f"{NGINX_MODULES_DIR / module} is missing (libnginx-mod-http-lua)"
    if not Path(NGINX).exists():
        return False, f"{NGINX} is missing"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True, check=False, timeout=30)
    if probe.returncode != 0:
        return False, f"cannot make a mount namespace: {probe.stderr.strip()}"
    return True, ""


def ensure_deploy_user(name: str = DEPLOY_USER) -> None:
    """A system user with a shell and an unlocked (password-less, key-only) account: sshd
    without PAM refuses a locked one. Kept after the run (other runs may use it)."""
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--create-home", "--home-dir",
                        f"/var/lib/{name}", "--shell", "/bin/bash", name],
                       check=True, capture_output=True, timeout=60)
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, timeout=60)


def _uid_gid(name: str) -> tuple[int, int]:
    import pwd
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def sudoers_text(user: str, rules: Sequence[str]) -> str:
    return (f"# written by testkit/fleet.py for one test run; removed when it ends\n"
            f"{user} ALL=(root) NOPASSWD: {', '.join(rules)}\n")


def cleanup_stale() -> list[str]:
    """Namespaces, bridge and veth links, sudoers files of fleets whose process is gone."""
    removed = []
    for name in list_namespaces():
        m = _NS_RE.match(name)
        if m and not pid_alive(int(m[1])) and int(m[1]) != os.getpid():
            _kill_ns(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    links = _ip("-o", "link", "show", check=False).stdout
    for m in re.finditer(r"^\d+: (bf\d+[bv]\d+)[@:]", links, re.M):
        owner = _LINK_RE.match(m[1])
        if owner and not pid_alive(int(owner[1])):
            _ip("link", "del", m[1], check=False)
            removed.append(m[1])
    if SUDOERS_DIR.is_dir():
        for path in SUDOERS_DIR.iterdir():
            owner = _SUDOERS_RE.match(path.name)
            if owner and not pid_alive(int(owner[1])):
                path.unlink(missing_ok=True)
                removed.append(str(path))
    return removed


def _kill_ns(name: str) -> None:
    out = _ip("netns", "pids", name, check=False).stdout
    stop_pids([int(p) for p in out.split() if p.isdigit()], timeout=5.0)


def _subnet_in_use(k: int) -> bool:
    return f" {NETWORK}.{k}.1/" in _ip("-4", "-o", "addr", "show", check=False).stdout


class HostSshd(TestSshd):
    """sshd in a host's network namespace and its own mount namespace, for `login`."""

    def __init__(self, workdir: Path, host: str, netns: str, binds: Sequence[tuple[Path, str]],
                 login: str) -> None:
        self.binds = list(binds)
        self.login = login
        super().__init__(workdir, host=host, netns=netns)

    @property
    def user(self) -> str:
        return self.login

    def _argv(self) -> list[str]:
        boot = self.workdir / "boot.sh"
        lines = ["set -e"]
        for source, target in self.binds:
            lines.append(f"mount --bind '{source}' '{target}'")
        lines.append(f"exec {SSHD_BINARY} -D -e -f '{self.config}'")
        boot.write_text("\n".join(lines) + "\n")
        assert self.netns is not None
        return ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
                "private", "/bin/sh", str(boot)]


@dataclass
class FleetHost:
    label: str
    index: int  # .<index> in the fleet's /24
    ns: str
    veth: str
    address: str
    dir: Path  # <work>/hosts/<label>: its own tree (bound over the shared paths)
    sshd: HostSshd | None = None
    nginx_pid: int | None = None
    nginx: bool = False  # runs nginx (a traffic host, or an app host of a rolling fleet)

    @property
    def srv(self) -> Path:
        return self.dir / "srv"

    @property
    def etc_nginx(self) -> Path:
        return self.dir / "etc-nginx"

    @property
    def log_nginx(self) -> Path:
        return self.dir / "log-nginx"

    def url(self, port: int, path: str = "/") -> str:
        return f"http://{self.address}:{port}{path}"

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in this host's network and mount namespaces, as root."""
        assert self.sshd is not None and self.sshd.pid is not None
        return subprocess.run(["nsenter", "--target", str(self.sshd.pid), "--mount", "--net",
                               "--", *argv], capture_output=True, text=True, timeout=60,
                              check=check)


class TestFleet:
    """`apps` app hosts (app01...) and `traffic` traffic hosts (t1...), or with
    `nginx_on_apps` app hosts that are their own traffic hosts (behind an external
    balancer). Use as a context manager, or call start() and close()."""

    __test__ = False

    def __init__(self, apps: int, traffic: int = 2, *, nginx_on_apps: bool = False,
                 user: str = DEPLOY_USER, sudo_rules: Sequence[str] = SUDOERS_RULES,
                 work: Path | None = None) -> None:
        self.user = user
        self.sudo_rules = list(sudo_rules)
        self._own_work = work is None
        self.work = Path(work or tempfile.mkdtemp(prefix="bgfleet-", dir="/tmp")).resolve()
        self.work.chmod(0o755)  # the deploy user's sshd reads keys and trees under it
        self.pid = os.getpid()
        self.k = 0
        self.bridge = ""
        self.sudoers: Path | None = None
        self.hosts: list[FleetHost] = []
        self._plan = ([(f"app{i:02d}", nginx_on_apps) for i in range(1, apps + 1)]
                      + [(f"t{i}", True) for i in range(1, traffic + 1)])
        self.key = self.work / "keys" / "id_ed25519"
        self.known_hosts = self.work / "keys" / "known_hosts"
        self.mnt_srv = self.work / "mnt" / "srv"

    # ----- views
    @property
    def apps(self) -> list[FleetHost]:
        return [h for h in self.hosts if h.label.startswith("app")]

    @property
    def traffic(self) -> list[FleetHost]:
        return [h for h in self.hosts if h.label.startswith("t")]

    def host(self, label: str) -> FleetHost:
        return next(h for h in self.hosts if h.label == label)

    @property
    def namespaces(self) -> list[str]:
        return [h.ns for h in self.hosts]

    # ----- lifecycle
    def __enter__(self) -> TestFleet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self, sshd_timeout: float = 20.0) -> TestFleet:
        try:
            self._start(sshd_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, sshd_timeout: float) -> None:
        cleanup_stale()
        ensure_deploy_user(self.user)
        uid, gid = _uid_gid(self.user)
        self.k = next((k for k in range(1, 255) if not _subnet_in_use(k)), 0)
        if not self.k:
            raise RuntimeError(f"every {NETWORK}.N.0/24 fleet network is in use")
        self.bridge = f"bf{self.pid}b{self.k}"
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{NETWORK}.{self.k}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        generate_ed25519_key(self.key, "bgfleet-deploy")
        self.mnt_srv.mkdir(parents=True, exist_ok=True)
        for n, (label, nginx) in enumerate(self._plan, start=2):
            self.hosts.append(self._make_host(label, n, nginx, uid, gid))
        self.sudoers = SUDOERS_DIR / f"{SUDOERS_PREFIX}{self.pid}-{self.k}"
        self.write_sudoers(self.sudo_rules)
        # start every sshd, then wait for all of them: 18 banners in parallel
        for h in self.hosts:
            assert h.sshd is not None
            h.sshd.start(timeout=sshd_timeout)
        self.known_hosts.write_text("".join(h.sshd.known_hosts_line() + "\n"  # type: ignore[union-attr]
                                            for h in self.hosts))
        for h in self.hosts:
            if h.nginx:
                self._start_nginx(h)

    def write_sudoers(self, rules: Sequence[str]) -> None:
        """(Re)write this fleet's sudoers file, checked by visudo before it is installed."""
        assert self.sudoers is not None
        SUDOERS_DIR.mkdir(mode=0o755, exist_ok=True)
        tmp = self.work / "sudoers.tmp"
        tmp.write_text(sudoers_text(self.user, rules))
        tmp.chmod(0o440)
        check = subprocess.run(["visudo", "-cf", str(tmp)], capture_output=True, text=True,
                               check=False, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"visudo rejected the test sudoers: {check.stdout}{check.stderr}")
        os.replace(tmp, self.sudoers)  # type: ignore[arg-type]

    def _make_host(self, label: str, n: int, nginx: bool, uid: int, gid: int) -> FleetHost:
        ns = f"{NS_PREFIX}{self.pid}-{self.k}-{label}"
        h = FleetHost(label, n, ns, f"bf{self.pid}v{n}", f"{NETWORK}.{self.k}.{n}",
                      self.work / "hosts" / label, nginx=nginx)
        _ip("netns", "add", ns)
        _ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", h.veth, "master", self.bridge)
        _ip("link", "set", h.veth, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        h.srv.mkdir(parents=True, exist_ok=True)
        os.chown(h.srv, uid, gid)
        binds: list[tuple[Path, str]] = [(h.srv, str(self.mnt_srv))]
        if nginx:
            self._write_nginx_tree(h, uid, gid)
            binds += [(h.etc_nginx, "/etc/nginx"), (h.log_nginx, "/var/log/nginx")]
        h.sshd = HostSshd(h.dir / "sshd", h.address, ns, binds, self.user)
        h.sshd.authorized_keys.write_text(self.key.with_suffix(".pub").read_text())
        return h

    def _write_nginx_tree(self, h: FleetHost, uid: int, gid: int) -> None:
        include = h.etc_nginx / "bluegreen"
        include.mkdir(parents=True, exist_ok=True)
        os.chown(include, uid, gid)  # the one directory the deploy user writes nginx files to
        h.log_nginx.mkdir(parents=True, exist_ok=True)
        for name in TEMP_PATHS:
            (h.log_nginx / "tmp" / name).mkdir(parents=True, exist_ok=True)
        lines = [f"load_module {NGINX_MODULES_DIR / m};" for m in LUA_MODULES]
        lines += ["user root;", "worker_processes 1;", "pid /var/log/nginx/nginx.pid;",
                  "error_log /var/log/nginx/error.log notice;",
                  "events { worker_connections 1024; }", "http {", "    access_log off;"]
        lines += [f"    {name}_temp_path /var/log/nginx/tmp/{name};" for name in TEMP_PATHS]
        lines += ["    include /etc/nginx/bluegreen/*.conf;", "}", ""]
        (h.etc_nginx / "nginx.conf").write_text("\n".join(lines))

    def _start_nginx(self, h: FleetHost) -> None:
        assert h.sshd is not None and h.sshd.pid is not None
        pid_file = h.log_nginx / "nginx.pid"
        proc = start_process(["nsenter", "--target", str(h.sshd.pid), "--mount", "--net", "--",
                              nginx_binary(), "-g", "daemon off;"],
                             h.log_nginx / "stderr.log", cwd=h.dir)
        h.nginx_pid = proc.pid

        def ready() -> bool:
            if not pid_alive(proc.pid):
                raise RuntimeError(f"nginx on {h.label} exited: "
                                   f"{(h.log_nginx / 'stderr.log').read_text()[-2000:]}"
                                   f"{(h.log_nginx / 'error.log').read_text()[-2000:]}")
            try:
                return int(pid_file.read_text().strip()) == proc.pid
            except (OSError, ValueError):
                return False
        wait_until(ready, 15, f"nginx on {h.label} to write its pid file")

    def close(self) -> None:
        """Stop every process of the fleet by PID, delete its namespaces, links, sudoers."""
        errors: list[BaseException] = []

        def attempt(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # collected: one stuck host must not leak the others
                errors.append(exc)

        for h in reversed(self.hosts):
            if h.nginx_pid is not None:
                attempt(stop_pids, [h.nginx_pid, *descendant_pids(h.nginx_pid)], 5.0)
            attempt(self._stop_apps, h)
            if h.sshd is not None:
                attempt(h.sshd.stop)
            attempt(_kill_ns, h.ns)
            attempt(_ip, "link", "del", h.veth)
            if h.ns in list_namespaces():
                attempt(_ip, "netns", "del", h.ns)
        self.hosts.clear()
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
        if self.sudoers is not None:
            self.sudoers.unlink(missing_ok=True)
        left = [n for n in list_namespaces() if n.startswith(f"{NS_PREFIX}{self.pid}-{self.k}-")]
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if left:
            errors.append(RuntimeError(f"namespaces survived teardown: {left}"))
        if errors:
            raise errors[0]

    @staticmethod
    def _stop_apps(h: FleetHost) -> None:
        """The slots bluegreen started on the host, by the pids in their pidfiles."""
        pids = []
        for pidfile in h.srv.glob("*/slots/*/pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                if pid_alive(pid):
                    pids += [pid, *descendant_pids(pid)]
        if pids:
            stop_pids(pids, timeout=5.0)

    # ----- a project deploying to it
    def project(self, dir: Path, artifacts: dict[str, Path], *, app: str = "demo",
                apps: int | None = None, mode: str = "lua", listen: int = 8080,
                control_port: int = 8090, blue: int = 8081, green: int = 8082,
                extra_toml: str = "", sudo: bool = True, nginx_command: str = NGINX,
                connect_timeout: float = 5.0) -> FleetProject:
        """bluegreen.toml for this fleet: the first `apps` app hosts (all by default) and
        the traffic hosts (none: every app host is its own traffic host)."""
        chosen = self.apps[:apps] if apps is not None else self.apps
        rows = ",\n".join(f'  {{address = "{h.address}", name = "{h.label}"}}'
                          for h in chosen)
        traffic = ",\n".join(f'  {{address = "{h.address}", name = "{h.label}"}}'
                             for h in self.traffic)
        hosts = f"app = [\n{rows},\n]\n" + (f"traffic = [\n{traffic},\n]\n" if traffic else "")
        proj = FleetProject(dir, None, artifacts, hosts, app=app, mode=mode,  # type: ignore[arg-type]
                            blue=blue, green=green, control_port=control_port,
                            app_env={"BIND": "0.0.0.0"}, health_timeout=30,
                            keep_releases=3)
        proj.fleet, proj.listen, proj.nginx_command = self, listen, nginx_command
        proj.sudo, proj.connect_timeout, proj.fleet_toml = sudo, connect_timeout, extra_toml
        proj.front_hosts = self.traffic or chosen
        return proj.write()  # type: ignore[return-value]


@dataclass
class FleetProject(Project):
    """A Project whose hosts are a TestFleet's: `fab` runs in the root namespace and logs in
    to every host as the deploy user."""

    fleet: TestFleet | None = None
    listen: int = 8080
    nginx_command: str = NGINX
    sudo: bool = True
    connect_timeout: float = 5.0
    fleet_toml: str = ""
    front_hosts: list[FleetHost] = field(default_factory=list)

    @property
    def srv(self) -> Path:
        assert self.fleet is not None
        return self.fleet.mnt_srv

    def primary_root(self) -> Path:
        """The app's directory on the primary host (state, history, lock)."""
        return self.front_hosts[0].srv / self.app

    def state(self) -> dict[str, Any]:
        import json
        try:
            return json.loads((self.primary_root() / "state.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def history_entries(self) -> list[dict[str, Any]]:
        import json
        path = self.primary_root() / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def render_toml(self) -> str:
        assert self.fleet is not None
        f = self.fleet
        lines = [f'app = "{self.app}"', 'start = "{release}/bin/runner {port}"',
                 f"keep_releases = {self.keep_releases or 3}", "", "[hosts]", self.hosts_toml,
                 "[slots]", f"blue = {self.blue}", f"green = {self.green}", "",
                 "[paths]", f'root = "{f.mnt_srv}"', "",
                 "[health]", f"timeout = {float(self.health_timeout)}", "",
                 "[nginx]", f'command = "{self.nginx_command}"',
                 'target = "/etc/nginx/bluegreen/{app}.conf"', f'listen = "{self.listen}"',
                 'error_log = "/var/log/nginx/error.log"',
                 'pid_file = "/var/log/nginx/nginx.pid"',
                 f"drain_timeout = {float(self.drain_timeout)}", f'mode = "{self.mode}"',
                 f"control_port = {self.control_port}", "",
                 "[env]", 'BIND = "0.0.0.0"', "",
                 "[ssh]", f'user = "{f.user}"', f'key_file = "{f.key}"',
                 f'known_hosts = "{f.known_hosts}"',
                 f"connect_timeout = {float(self.connect_timeout)}", ""]
        if self.sudo:
            lines += ["[sudo]", 'traffic = ["nginx"]', ""]
        lines.append(self.fleet_toml)
        return "\n".join(lines).rstrip("\n") + "\n"

    def front(self, path: str = "/", host: FleetHost | None = None) -> requests.Response:
        where = host or self.front_hosts[0]
        return requests.get(where.url(self.listen, path), timeout=5)

    def front_versions(self) -> dict[str, str]:
        """What each front door answers (traffic hosts, or app hosts behind a balancer)."""
        out = {}
        for h in self.front_hosts:
            r = self.front(host=h)
            out[h.label] = r.headers.get("X-App-Version", f"HTTP {r.status_code}")
        return out

    def stop_everything(self) -> None:
        if self.fleet is None:
            return
        for h in self.fleet.hosts:
            for pidfile in h.srv.glob(f"{self.app}/slots/*/pid"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int(pidfile.read_text().split()[0])
                    if pid_alive(pid):
                        stop_pids([pid, *descendant_pids(pid)], timeout=5.0)


def wait_fleet_serving(proj: FleetProject, version: str, timeout: float = 10.0) -> None:
    wait_until(lambda: set(proj.front_versions().values()) == {version}, timeout,
               f"every front door to answer {version}")


