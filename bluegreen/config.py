"""The typed config: bluegreen.toml, overridden by environment and command line.

Precedence, lowest first: built-in defaults < bluegreen.toml < BLUEGREEN__SECTION__KEY
environment variables < --set section.key=value on the command line. Overrides land in the
raw TOML tree before validation, so an override is checked exactly like a file value and an
error names where the bad value came from.

The typed binder itself (setting(), Binder, read_toml) is bluegreen/binder.py, shared with
automation.toml.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluegreen.binder import (  # noqa: F401 - the binder's names, re-exported
    MAX_SECONDS,
    Binder,
    _number,
    check_label,
    first_control_char,
    join_key,
    read_toml,
    seconds,
    setting,
)
from bluegreen.errors import ConfigError

ENV_PREFIX = "BLUEGREEN__"
SLOT_NAMES = ("blue", "green")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# A POSIX-portable user or group name as useradd and systemd (strict mode) both accept it:
# no control characters, spaces, ':' or '/', never only digits (a UID is not a name).
_USER_RE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.-]{0,31})?")
_USER_WHAT = ("a user name (letters, digits, '_', '.', '-'; not starting with a digit, "
              "at most 32 characters), or empty")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_host(text: str, key: str = "host", where: str = "<host>") -> HostSpec:
    """"local", "HOST", "USER@HOST", "USER@HOST:PORT" or "[IPv6]:PORT"."""
    if text == "local":
        return HostSpec("local")
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[0-9a-fA-F:]+\]|[^:@\s\[\]]+)(?::(\d+))?", text)
    if not m or first_control_char(text) is not None:
        raise ConfigError(where, key, f"cannot parse host {text!r}: expected local, HOST, "
                                      "USER@HOST or USER@HOST:PORT")
    user, address, port = m.groups()
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(where, key, f"expected a TCP port 1-65535 in host {text!r}, "
                                      f"got {_number(int(port))}")
    return HostSpec(address.strip("[]"), user=user or "", port=int(port) if port else 0)


def _url_path(optional: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        if (value or not optional) and not value.startswith("/"):
            raise ValueError(f"expected a path starting with /, e.g. /health, got {value!r}")
        if any(ch.isspace() for ch in value):
            raise ValueError(f"expected a URL path without spaces, got {value!r}")
        return value
    return check


_LISTEN_RE = re.compile(r"(?:(\[[0-9A-Fa-f:.]+\]|\*|[A-Za-z0-9._-]+):)?([0-9]+)")
_LISTEN_FORMS = ('PORT, ADDRESS:PORT or [IPv6]:PORT, optionally followed by parameters, '
                 'e.g. "80", "127.0.0.1:8080" or "[::]:443 ssl"')


def _check_listen(value: str) -> str:
    """The forms bluegreen can also knock on to verify a switch (render.front_door)."""
    words = value.split()
    if not words:
        raise ValueError(f"expected {_LISTEN_FORMS}, got an empty string")
    if words[0].startswith("unix:"):
        raise ValueError(f"unix sockets are not supported: bluegreen verifies every switch "
                         f"through the front door over TCP; use {_LISTEN_FORMS}")
    m = _LISTEN_RE.fullmatch(words[0])
    if not m:
        raise ValueError(f"cannot read {words[0]!r}: expected {_LISTEN_FORMS}")
    port = int(m[2])
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a TCP port 1-65535 in {words[0]!r}, got {_number(port)}")
    return value


@dataclass(frozen=True)
class HostSpec:
    """One machine. `local` means this machine through subprocess, with no SSH."""

    address: str = setting(nonempty=True, one_line=True, what="the host's address")
    name: str = setting("", one_line=True)
    user: str = setting("", one_line=True)
    port: int = setting(0, port="the default, ssh.port")
    # per-host override of paths.root (hosts sharing a filesystem in tests)
    root: str = setting("", one_line=True)
    # the address nginx on traffic hosts uses to reach this host's slots
    upstream: str = setting("", one_line=True)

    @property
    def is_local(self) -> bool:
        return self.address == "local"

    @property
    def label(self) -> str:
        return self.name or self.address


_HOSTS = {"split": True, "what": 'a list of hosts, e.g. ["local"] or ["deploy@app1:22"]'}


@dataclass(frozen=True)
class Hosts:
    app: list[HostSpec] = field(default_factory=lambda: [HostSpec("local")], metadata=_HOSTS)
    traffic: list[HostSpec] = field(default_factory=list, metadata=_HOSTS)  # empty: app hosts


@dataclass(frozen=True)
class Slots:
    blue: int = setting(8081, port=True)
    green: int = setting(8082, port=True)


@dataclass(frozen=True)
class Paths:
    # everything for app X lives in {root}/{X}
    root: str = setting("/srv/bluegreen", one_line=True)


@dataclass(frozen=True)
class Health:
    path: str = setting("/health", check=_url_path(optional=False))
    status: int = setting(200, ge=100, le=599, what="an HTTP status 100-599")
    timeout: float = seconds(60.0)  # seconds for a new slot to become healthy
    interval: float = seconds(0.05)  # the longest gap between probes; probing starts faster
    successes: int = setting(2, ge=1, range="at least 1")  # consecutive successes required
    request_timeout: float = seconds(2.0)
    host_header: str = setting("", one_line=True)  # some apps route on Host; empty: localhost


@dataclass(frozen=True)
class Process:
    # plain | supervisor | systemd
    backend: str = setting("plain", choices=("plain", "supervisor", "systemd"))
    stop_timeout: float = seconds(15.0, ge=0)  # TERM, then this long, then KILL
    port_free_timeout: float = seconds(10.0, ge=0)
    # supervisord.conf on the host (supervisor backend)
    supervisor_conf: str = setting("", one_line=True)
    # where program files go; defaults to {root}/{app}/supervisor
    supervisor_include_dir: str = setting("", one_line=True)
    supervisorctl: str = setting("supervisorctl", one_line=True)
    systemd_unit_dir: str = setting("/etc/systemd/system", one_line=True)
    # who the app runs as (systemd User=, supervisor user=). Empty: under systemd, the SSH
    # user when sudo.app = ["systemctl"] (a non-root deploy should not start a root app),
    # else unchanged (root under systemd, supervisord's user); see process.app_user.
    user: str = setting("", pattern=_USER_RE, what=_USER_WHAT)
    # systemd Group=; empty: the user's primary group
    group: str = setting("", pattern=_USER_RE, what=_USER_WHAT.replace("user", "group"))


# lua mode's control listener when nginx.control_port is 0. Each app's control server
# answers only to its own name (Host: bluegreen-<app>), so several apps may share it.
DEFAULT_CONTROL_PORT = 18089
NGINX_MODES = ("auto", "reload", "lua")
NGINX_INTEGRATIONS = ("server", "include")


@dataclass(frozen=True)
class Nginx:
    # the command line before `-t` / `-s reload`: "nginx", "sudo nginx", "nginx -p P -c C"
    command: str = setting("nginx", nonempty=True, one_line=True)
    # Jinja2 template, relative to the config file; empty: bundled default
    template: str = setting("", one_line=True)
    # the rendered file nginx includes at http level (conf.d/)
    target: str = setting("/etc/nginx/conf.d/{app}.conf", nonempty=True, one_line=True)
    # server: bluegreen renders a whole server block on `listen`. include: it renders only
    # what it owns (upstream, lua pieces) and your own server/location include two snippets
    integration: str = setting("server", choices=NGINX_INTEGRATIONS)
    # include integration: the snippets your server block and its location include; empty:
    # next to `target`, named {app}.server / {app}.location (not *.conf: conf.d/*.conf is
    # included at http level, where these must not be)
    server_snippet: str = setting("", one_line=True)
    location_snippet: str = setting("", one_line=True)
    # the front door: what the rendered server block listens on, or (include integration)
    # what your own server block listens on; "443 ssl": the post-switch check speaks TLS
    listen: str = setting("80", number_text=True, one_line=True, check=_check_listen)
    # server name: also the SNI and Host of the post-switch check
    server_name: str = setting("_", nonempty=True, one_line=True)
    # TLS front door: CA bundle (on the machine running fab) its certificate is checked
    # against; empty: the system's trust store
    tls_ca_file: str = setting("", one_line=True)
    # false: do not check the certificate; refused unless the front door is loopback
    tls_verify: bool = True
    # checked through the front door after a reload; default health.path
    verify_path: str = setting("", check=_url_path(optional=True))
    verify_timeout: float = seconds(10.0)
    # scanned for [emerg] after reload: catches what `nginx -t` cannot
    error_log: str = setting("", one_line=True)
    # the master's pid: we wait for the old workers to retire
    pid_file: str = setting("/run/nginx.pid", one_line=True)
    # max wait for in-flight requests before stopping a slot; 0: drained elsewhere
    drain_timeout: float = seconds(30.0, ge=0)
    # auto: lua where that traffic host's nginx has the lua module loaded, else reload
    mode: str = setting("auto", choices=NGINX_MODES)  # see README: without a reload
    # lua mode: loopback port of the control endpoint; 0: DEFAULT_CONTROL_PORT
    control_port: int = setting(0, port=f"the default, {DEFAULT_CONTROL_PORT}")
    # longest silence on a WebSocket (upgraded) connection before nginx closes it
    stream_timeout: float = seconds(3600.0)

    @property
    def control(self) -> int:
        """The control listener's port (lua mode)."""
        return self.control_port or DEFAULT_CONTROL_PORT

    @property
    def tls(self) -> bool:
        """The front door speaks TLS: `listen` carries the `ssl` parameter."""
        return "ssl" in self.listen.split()[1:]


ROUTERS = ("nginx", "haproxy")
# haproxy durations as haproxy writes them (2s, 500ms); they go into the rendered file as is
_HAPROXY_DURATION = re.compile(r"\d+(?:us|ms|s|m|h|d)?")
_HAPROXY_LISTEN_FORMS = 'PORT, ADDRESS:PORT or [IPv6]:PORT, e.g. "80" or "127.0.0.1:8080"'


def _check_haproxy_listen(value: str) -> str:
    """One address the post-switch check can knock on; TLS (bind parameters) is not
    verified over the front door yet, so no parameters."""
    if len(value.split()) != 1:
        raise ValueError(f"expected one address, {_HAPROXY_LISTEN_FORMS}, without bind "
                         f"parameters, got {value!r}")
    return _check_listen(value)


def _check_admin_socket(value: str) -> str:
    """Where haproxy's CLI listens: a unix socket path or a TCP loopback address."""
    if value.removeprefix("unix@").startswith("/"):
        if first_control_char(value) is not None or "'" in value:
            raise ValueError(f"expected a socket path without quotes or control characters, "
                             f"got {value!r}")
        return value
    m = re.fullmatch(r"(?:ipv4@)?(\d{1,3}(?:\.\d{1,3}){3}):(\d+)", value)
    if not m or not 1 <= int(m[2]) <= 65535:
        raise ValueError("expected an absolute path (a unix socket, e.g. "
                         "/run/haproxy/admin.sock) or ipv4@ADDRESS:PORT, got " + repr(value))
    return value


@dataclass(frozen=True)
class Traffic:
    # what moves traffic on the traffic hosts: nginx (the [nginx] section) or haproxy
    # (the [haproxy] section: switches through its runtime API, no reload)
    router: str = setting("nginx", choices=ROUTERS)


@dataclass(frozen=True)
class Haproxy:
    """traffic.router = "haproxy": bluegreen owns one file per app that haproxy loads after
    the main config (`haproxy -f haproxy.cfg -f <dir of target>`); the main config's
    global section has the admin socket (`level admin`) and haproxy runs master-worker."""

    # the command line before `-c -f ...`: "haproxy", "sudo haproxy"
    command: str = setting("haproxy", nonempty=True, one_line=True)
    # Jinja2 template, relative to the config file; empty: bundled default
    template: str = setting("", one_line=True)
    # the rendered file haproxy loads (e.g. every *.cfg of /etc/haproxy/bluegreen/ through
    # `-f /etc/haproxy/bluegreen`); a directory haproxy loads only reads *.cfg files
    target: str = setting("/etc/haproxy/bluegreen/{app}.cfg", nonempty=True, one_line=True)
    # the file (or directory) haproxy loads before ours: `haproxy -c` checks both together
    main_config: str = setting("/etc/haproxy/haproxy.cfg", nonempty=True, one_line=True)
    # the front door: what the rendered frontend binds (verify knocks here)
    listen: str = setting("80", number_text=True, one_line=True, check=_check_haproxy_listen)
    # the CLI bluegreen switches through (`stats socket ... level admin` in the main config)
    admin_socket: str = setting("/run/haproxy/admin.sock", check=_check_admin_socket)
    # how the socket is reached: auto (socat, else python3), socat, python3, bash-tcp
    transport: str = setting("auto", choices=("auto", "socat", "python3", "bash-tcp"))
    # this app's server-state file: a reload or restart comes up on the switched slot
    state_file: str = setting("/var/lib/haproxy/bluegreen-{app}.state", nonempty=True,
                              one_line=True)
    # the master's pid (haproxy -p; Debian: /run/haproxy.pid), signalled with USR2 to reload
    pid_file: str = setting("/run/haproxy.pid", one_line=True)
    # replaces the USR2 signal, e.g. "sudo systemctl reload haproxy"
    reload_command: str = setting("", one_line=True)
    # wait this long for a new worker after a reload (only a change of hosts, ports...)
    reload_timeout: float = seconds(30.0)
    # the post-switch check through the front door
    verify_timeout: float = seconds(10.0)
    # max wait for in-flight requests before a slot is stopped; then its sessions are closed
    drain_timeout: float = seconds(30.0, ge=0)
    # haproxy's own health checks of every slot
    check_interval: str = setting("1s", pattern=_HAPROXY_DURATION,
                                  what="a haproxy duration, e.g. 1s or 500ms")


@dataclass(frozen=True)
class Ssh:
    user: str = setting("", one_line=True)
    port: int = setting(22, port=True)
    key_file: str = setting("", one_line=True)
    known_hosts: str = setting("~/.ssh/known_hosts", one_line=True)
    accept_unknown_hosts: bool = False  # explicit, logged opt-out of host-key checking
    connect_timeout: float = seconds(10.0)
    command_timeout: float = seconds(120.0)
    keepalive: int = setting(15, ge=0, le=86400)  # seconds; 0: no keepalive


_duration = seconds  # (the Watch section has a key named `seconds`)


@dataclass(frozen=True)
class Watch:
    """The window after every traffic change: the new slot must keep serving, or bluegreen
    switches back to the warm slot by itself (README, "Watch")."""

    seconds: float = _duration(10.0, ge=0)  # 0: no watch
    max_error_rate: float = setting(0.01, ge=0, le=1,
                                    range="a fraction of requests, 0-1 (0.01 = 1 %)")
    max_p99_ms: float = setting(0.0, ge=0)  # 0: latency is not judged
    # below this many requests seen, the window has no verdict yet
    min_requests: int = setting(10, ge=1)
    # probed through every front door during the window: real pages, not just /health
    probe_paths: list[str] = field(default_factory=lambda: ["/"],
                                   metadata={"items": {"check": _url_path(optional=False)}})
    interval: float = _duration(0.25, ge=0.05)


_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")  # what nginx's $cookie_NAME can read


def _env_var_name(value: str) -> str:
    if value and not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"expected the NAME of an environment variable (letters, digits, _), "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class Preview:
    """Try a `fab deploy --no-switch` release through the real front door before anyone is
    switched (lua mode, haproxy): a request carrying the token in this header or cookie is
    routed to the ready slot. The token itself never goes in a file: `token_env` names the
    environment variable (on the machine running fab) that holds it."""

    header: str = setting("X-Bluegreen-Preview", pattern=_HEADER_NAME_RE,
                          what="an HTTP header name (letters, digits, -)")
    cookie: str = setting("bluegreen_preview", pattern=_COOKIE_NAME_RE,
                          what="a cookie name (letters, digits, _)")
    # empty: no preview route (a ready slot is then reached only by `fab promote`)
    token_env: str = setting("", check=_env_var_name)


@dataclass(frozen=True)
class Canary:
    """`fab switch --weight N` / `fab deploy --canary 5,25,100`: a share of users, chosen by
    a cohort cookie, goes to the new slot (lua mode, haproxy). The cookie keeps a user on one
    side."""

    cookie: str = setting("bluegreen_cohort", pattern=_COOKIE_NAME_RE,
                          what="a cookie name (letters, digits, _)")
    # the default of `--step`: how long each step is watched before the next one
    step: float = seconds(60.0)


@dataclass(frozen=True)
class LockCfg:
    # a lock from another machine whose heartbeat is older than this is taken over; the
    # holder refreshes it at every phase, so it must outlast the longest phase (health)
    lease: float = seconds(300.0)


SUDO_TRAFFIC = ("nginx",)
SUDO_APP = ("systemctl", "supervisorctl")
SUDO = "sudo -n"  # never a password prompt: a missing rule fails at once, and is named


@dataclass(frozen=True)
class Sudo:
    """What bluegreen runs through `sudo -n` when it logs in as a non-root user, per host
    type. Every needed rule is checked on every host before anything changes (README,
    "Fleets": the exact sudoers lines)."""

    # "nginx": nginx -t and nginx -s reload on the traffic hosts
    traffic: list[str] = field(default_factory=list, metadata={
        "split": True, "items": {"choices": SUDO_TRAFFIC}})
    # "systemctl" (process.backend = "systemd") or "supervisorctl" on the app hosts
    app: list[str] = field(default_factory=list, metadata={
        "split": True, "items": {"choices": SUDO_APP}})


def _check_batch(value: str) -> str:
    text = value.strip()
    if not text:
        return ""
    number = text[:-1] if text.endswith("%") else text
    if not number.isdigit() or int(number) < 1 or (text.endswith("%") and int(number) > 100):
        raise ValueError(f"expected a number of hosts (e.g. 2) or a percentage 1%-100% (e.g. "
                         f"25%), got {value!r}")
    return text


@dataclass(frozen=True)
class FleetCfg:
    # hosts acted on at once (each holds one SSH connection); --parallel
    parallel: int = setting(32, ge=1, le=1024, range="1 to 1024")
    # a phase still running after this long prints which hosts it waits for
    progress_every: float = seconds(10.0)
    # rolling deploys (every app host its own traffic host): "" all at once, "25%" or "2"
    batch: str = setting("", check=_check_batch, number_text=True,
                         what="a number of hosts or a percentage")
    max_fail: int = setting(0, ge=0)  # hosts that may fail before a rollout stops
    pause: float = seconds(0.0, ge=0)  # between batches
    keep_partial: bool = False  # a stopped rollout leaves switched hosts switched


@dataclass(frozen=True)
class HooksCfg:
    # relative to the config file
    dir: str = setting("hooks", one_line=True)
    timeout: float = seconds(300.0)


@dataclass(frozen=True)
class Config:
    app: str = setting(pattern=_NAME_RE,
                       what="a short name of letters, digits, '.', '_' or '-'")
    start: str = setting(nonempty=True,  # e.g. "{release}/bin/runner {port}"
                         what='the start command, e.g. "{release}/bin/runner {port}"')
    # default for --artifact
    artifact: str = setting("", one_line=True)
    # file name inside a release for single-file artifacts
    artifact_name: str = setting("", one_line=True)
    keep_releases: int = setting(5, ge=2, range="at least 2 (the live and the warm release)")
    hosts: Hosts = field(default_factory=Hosts)
    slots: Slots = field(default_factory=Slots)
    paths: Paths = field(default_factory=Paths)
    health: Health = field(default_factory=Health)
    process: Process = field(default_factory=Process)
    nginx: Nginx = field(default_factory=Nginx)
    traffic: Traffic = field(default_factory=Traffic)
    haproxy: Haproxy = field(default_factory=Haproxy)
    ssh: Ssh = field(default_factory=Ssh)
    hooks: HooksCfg = field(default_factory=HooksCfg)
    lock: LockCfg = field(default_factory=LockCfg)
    watch: Watch = field(default_factory=Watch)
    sudo: Sudo = field(default_factory=Sudo)
    fleet: FleetCfg = field(default_factory=FleetCfg)
    preview: Preview = field(default_factory=Preview)
    canary: Canary = field(default_factory=Canary)
    # no value is ever echoed in a message: [env] often holds secrets
    env: dict[str, str] = field(default_factory=dict,
                                metadata={"items": {"number_text": True, "secret": True}})
    source: str = "<defaults>"  # the file this came from, for messages
    base_dir: str = "."  # directory of the config file; relative paths resolve here

    # ---- derived views (pure) ----
    @property
    def traffic_hosts(self) -> list[HostSpec]:
        return self.hosts.traffic or self.hosts.app

    @property
    def primary(self) -> HostSpec:
        """Where the lock and the state live: the first traffic host."""
        return self.traffic_hosts[0]

    def port_of(self, slot: str) -> int:
        return int(getattr(self.slots, slot))

    def root_on(self, host: HostSpec) -> str:
        return f"{(host.root or self.paths.root).rstrip('/')}/{self.app}"

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def nginx_target(self) -> str:
        return self.nginx.target.format(app=self.app)

    @property
    def nginx_snippets(self) -> dict[str, str]:
        """include integration: the files your server block ("server") and its location
        ("location") include, by role; empty for the server integration."""
        if self.nginx.integration != "include":
            return {}
        base = self.nginx_target.removesuffix(".conf")
        return {"server": (self.nginx.server_snippet or base + ".server").format(app=self.app),
                "location": (self.nginx.location_snippet
                             or base + ".location").format(app=self.app)}

    @property
    def verify_path(self) -> str:
        return self.nginx.verify_path or self.health.path

    @property
    def haproxy_target(self) -> str:
        return self.haproxy.target.format(app=self.app)

    @property
    def haproxy_state_file(self) -> str:
        return self.haproxy.state_file.format(app=self.app)

    @property
    def drain_timeout(self) -> float:
        """How long a slot's in-flight requests may take before it is stopped: the setting
        of the router that moves traffic."""
        if self.traffic.router == "haproxy":
            return self.haproxy.drain_timeout
        return self.nginx.drain_timeout


def other_slot(slot: str) -> str:
    return "green" if slot == "blue" else "blue"


# ---------------------------------------------------------------- loading


def load(
    path: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read bluegreen.toml, apply env and CLI overrides, validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("BLUEGREEN_CONFIG") or "bluegreen.toml")
    source = str(path)
    raw = read_toml(path, what="config file", hint="pass --config PATH or set BLUEGREEN_CONFIG")
    origins: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            parts = name[len(ENV_PREFIX):].split("__")
            if parts[0].lower() == "env" and len(parts) == 2:
                dotted = f"env.{parts[1]}"  # the app's own variable names keep their case
            else:
                dotted = ".".join(p.lower() for p in parts)
            _set_dotted(raw, dotted, _override_value(dotted, value), f"environment {name}")
            origins[dotted] = f"environment {name}"
    for item in overrides or []:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError("--set", item.partition("=")[0],
                              "expected KEY=VALUE, e.g. health.timeout=90")
        _set_dotted(raw, dotted.strip(), _override_value(dotted.strip(), value),
                    f"--set {dotted.strip()}")
        origins[dotted.strip()] = f"--set {dotted.strip()}"
    return from_dict(raw, source=source, base_dir=str(path.resolve().parent), origins=origins)


def from_dict(
    raw: dict[str, Any],
    *,
    source: str = "<dict>",
    base_dir: str = ".",
    origins: dict[str, str] | None = None,
) -> Config:
    binder = Binder(source, origins=origins, text_forms={HostSpec: parse_host})
    cfg = binder.bind(Config, raw, source=source, base_dir=base_dir)
    _check_semantics(cfg, binder)
    return _with_sudo(cfg, binder)


def _with_sudo(cfg: Config, binder: Binder) -> Config:
    """[sudo] puts `sudo -n` in front of the commands it names: the rest of bluegreen runs
    nginx.command and process.supervisorctl as they are (systemctl: process.py)."""
    import dataclasses

    def fail(key: str, problem: str) -> None:
        raise ConfigError(binder.where(key), key, problem)

    if "nginx" in cfg.sudo.traffic:
        if cfg.nginx.command.split()[0] == "sudo":
            fail("nginx.command", "starts with sudo, and sudo.traffic = [\"nginx\"] adds "
                                  f"`{SUDO}` itself: give the plain command, e.g. "
                                  "\"/usr/sbin/nginx\"")
        cfg = dataclasses.replace(cfg, nginx=dataclasses.replace(
            cfg.nginx, command=f"{SUDO} {cfg.nginx.command}"))
    if "supervisorctl" in cfg.sudo.app:
        if cfg.process.supervisorctl.split()[0] == "sudo":
            fail("process.supervisorctl", "starts with sudo, and sudo.app = "
                                          "[\"supervisorctl\"] adds it itself")
        cfg = dataclasses.replace(cfg, process=dataclasses.replace(
            cfg.process, supervisorctl=f"{SUDO} {cfg.process.supervisorctl}"))
    if "systemctl" in cfg.sudo.app and cfg.process.backend != "systemd":
        fail("sudo.app", "\"systemctl\" is for process.backend = \"systemd\"")
    if "supervisorctl" in cfg.sudo.app and cfg.process.backend != "supervisor":
        fail("sudo.app", "\"supervisorctl\" is for process.backend = \"supervisor\"")
    return cfg


def _check_semantics(cfg: Config, binder: Binder) -> None:
    """What one key alone cannot say: rules across keys."""
    def fail(key: str, problem: str, *related: str) -> None:
        """Blame the override that set `key` or a related key, else the file."""
        where = next((binder.where(k) for k in (key, *related)
                      if binder.where(k) != cfg.source), cfg.source)
        raise ConfigError(where, key, problem)

    try:
        cfg.start.format(release="r", port=1, slot="s", app="a", artifact="f", version="v")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        fail("start", f"unknown placeholder or bad format ({type(exc).__name__}: {exc}); use "
                      "{release} {port} {slot} {app} {artifact} {version}, and {{ }} for "
                      "literal braces")
    if cfg.slots.blue == cfg.slots.green:
        fail("slots.green", f"blue and green must use different ports (both "
                            f"{cfg.slots.blue})", "slots.blue")
    if cfg.process.backend == "supervisor" and not cfg.process.supervisor_conf:
        fail("process.supervisor_conf", "required with backend = \"supervisor\": the path of "
                                        "supervisord.conf on the hosts", "process.backend")
    _check_app_user(cfg, fail)
    if cfg.nginx.mode == "lua":
        named = hosts_named_not_ip(cfg)
        if named:
            i, addr = named[0]
            fail(f"hosts.app[{i}]", f"lua mode routes by IP address and {addr!r} is a "
                                    "name: give the host `upstream = \"<its IP>\"`")
    _check_front_door(cfg, fail)
    if cfg.preview.cookie == cfg.canary.cookie:
        fail("preview.cookie", f"the preview token and the canary cohort need two cookies, "
                               f"and both are {cfg.preview.cookie!r}", "canary.cookie")
    if not cfg.hosts.app:
        fail("hosts.app", "expected at least one app host")
    for k in cfg.env:
        if not _ENV_NAME_RE.fullmatch(k):
            fail(join_key("env", k), "not a valid environment variable name")
    for key in ("target", "server_snippet", "location_snippet"):
        try:
            getattr(cfg.nginx, key).format(app=cfg.app)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            fail(f"nginx.{key}", "only the {app} placeholder is allowed")
    paths = [cfg.nginx_target, *cfg.nginx_snippets.values()]
    if len(set(paths)) != len(paths):
        fail("nginx.location_snippet", "nginx.target, server_snippet and location_snippet "
                                       "must be three different files", "nginx.server_snippet")

    if cfg.traffic.router == "haproxy":
        _check_haproxy(cfg, fail)


def _check_app_user(cfg: Config, fail: Callable[..., None]) -> None:
    """process.user / group only where the backend can act on them: plain starts the app
    with setsid as the SSH user and has no way to become anyone else; supervisor's
    program file has user= but no group (it takes the user's groups)."""
    backend = cfg.process.backend
    if backend == "plain":
        for key in ("user", "group"):
            if getattr(cfg.process, key):
                fail(f"process.{key}", "the plain backend runs the app as the SSH user and "
                                       "cannot switch to another; leave it empty (log in as "
                                       "that user instead) or use backend = \"systemd\" or "
                                       "\"supervisor\"", "process.backend")
    if backend == "supervisor" and cfg.process.group:
        fail("process.group", "supervisor runs a program with its user's own groups and has "
                              "no group setting: leave it empty", "process.backend")


def _check_haproxy(cfg: Config, fail: Callable[..., None]) -> None:
    """What the rendered haproxy file and its CLI lines need, said before any host is
    touched."""
    for key in ("target", "state_file"):
        try:
            getattr(cfg.haproxy, key).format(app=cfg.app)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            fail(f"haproxy.{key}", "only the {app} placeholder is allowed")
    target = cfg.haproxy_target
    if not target.endswith(".cfg"):
        # haproxy loads a directory's *.cfg files only: any other name would be ignored
        fail("haproxy.target", f"expected a file name ending in .cfg, got {target!r}")
    if not target.startswith("/"):
        fail("haproxy.target", f"expected an absolute path on the traffic hosts, got {target!r}")
    if not cfg.haproxy_state_file.startswith("/"):
        fail("haproxy.state_file", "expected an absolute path on the traffic hosts (haproxy "
                                   "reads it relative to its own working directory otherwise)")
    for key, value in (("haproxy.state_file", cfg.haproxy_state_file),
                       ("health.path", cfg.health.path),
                       ("health.host_header", cfg.health.host_header)):
        if "'" in value:
            fail(key, f"haproxy.cfg cannot hold a single quote, got {value!r}")


def hosts_named_not_ip(cfg: Config) -> list[tuple[int, str]]:
    """App hosts nginx would reach by name: lua mode's balancer needs IP addresses."""
    import ipaddress  # only lua mode needs it; keep it off the import path of a switch

    named = []
    for i, h in enumerate(cfg.hosts.app):
        addr = h.upstream or ("127.0.0.1" if h.is_local else h.address)
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            named.append((i, addr))
    return named


def _check_front_door(cfg: Config, fail: Callable[..., None]) -> None:
    """The post-switch check must be able to knock, and a TLS one must be able to trust."""
    n = cfg.nginx
    if not n.tls:
        return
    if not n.tls_verify:
        import ipaddress

        address = n.listen.split()[0].rpartition(":")[0].strip("[]")
        loopback = address in ("", "*", "0.0.0.0", "::", "localhost")  # knocked on as 127.0.0.1
        if not loopback:
            try:
                loopback = ipaddress.ip_address(address).is_loopback
            except ValueError:
                loopback = False
        if not loopback:
            fail("nginx.tls_verify", f"false is only allowed when the front door is a "
                                     f"loopback address, and nginx.listen is {n.listen!r}: "
                                     "give nginx.tls_ca_file (the CA that signed its "
                                     "certificate) instead", "nginx.listen")
        return
    if n.server_name.split()[0] == "_" and n.integration == "include":
        fail("nginx.server_name", "the TLS front door's certificate is checked against this "
                                  "name (SNI and Host): set the name your certificate is for",
             "nginx.listen")
    if n.tls_ca_file:
        ca = cfg.resolve(n.tls_ca_file)
        if not ca.is_file():
            fail("nginx.tls_ca_file", f"no such file: {ca}")
        import ssl  # only a TLS front door pays for it

        try:  # a file that is not a PEM bundle fails here, not at every post-switch check
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as exc:
            fail("nginx.tls_ca_file", f"expected PEM certificates (the CA that signed the "
                                      f"front door's certificate), but {ca} is not: {exc}")


# ---------------------------------------------------------------- overrides


def _override_value(dotted: str, text: str) -> Any:
    """App environment values stay verbatim strings (a secret is never reinterpreted as a
    number, a date or a boolean); everything else is read as a TOML value."""
    return text if dotted.startswith("env.") else _parse_scalar(text)


def _parse_scalar(text: str) -> Any:
    """`--set health.timeout=90` gives 90, `--set hosts.app=a,b` a string split later."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # not TOML (TOMLDecodeError), or absurd TOML
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(origin, dotted, "expected a dotted key such as health.timeout")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(origin, dotted, f"{'.'.join(parts[:i + 1])} is not a table")
        node = nxt
    node[parts[-1]] = value
