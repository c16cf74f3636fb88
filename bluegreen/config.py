"""The typed config: bluegreen.toml, overridden by environment and command line.

Precedence, lowest first: built-in defaults < bluegreen.toml < BLUEGREEN__SECTION__KEY
environment variables < --set section.key=value on the command line. Overrides land in the
raw TOML tree before validation, so an override is checked exactly like a file value and an
error names where the bad value came from.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from bluegreen.errors import ConfigError

ENV_PREFIX = "BLUEGREEN__"
SLOT_NAMES = ("blue", "green")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class HostSpec:
    """One machine. `local` means this machine through subprocess, with no SSH."""

    address: str
    name: str = ""
    user: str = ""
    port: int = 0
    root: str = ""  # per-host override of paths.root (hosts sharing a filesystem in tests)
    upstream: str = ""  # the address nginx on traffic hosts uses to reach this host's slots

    @property
    def is_local(self) -> bool:
        return self.address == "local"

    @property
    def label(self) -> str:
        return self.name or self.address


@dataclass(frozen=True)
class Hosts:
    app: list[HostSpec] = field(default_factory=lambda: [HostSpec("local")])
    traffic: list[HostSpec] = field(default_factory=list)  # empty: the app hosts


@dataclass(frozen=True)
class Slots:
    blue: int = 8081
    green: int = 8082


@dataclass(frozen=True)
class Paths:
    root: str = "/srv/bluegreen"  # everything for app X lives in {root}/{X}


@dataclass(frozen=True)
class Health:
    path: str = "/health"
    status: int = 200
    timeout: float = 60.0  # seconds for a new slot to become healthy
    interval: float = 0.05  # the longest gap between probes; probing starts faster
    successes: int = 2  # consecutive successes required
    request_timeout: float = 2.0
    host_header: str = ""  # some apps route on Host; empty sends "localhost"


@dataclass(frozen=True)
class Process:
    backend: str = "plain"  # plain | supervisor | systemd
    stop_timeout: float = 15.0  # TERM, then this long, then KILL
    port_free_timeout: float = 10.0
    supervisor_conf: str = ""  # supervisord.conf on the host (supervisor backend)
    supervisor_include_dir: str = ""  # where program files go; defaults to {root}/{app}/supervisor
    supervisorctl: str = "supervisorctl"
    systemd_unit_dir: str = "/etc/systemd/system"


@dataclass(frozen=True)
class Nginx:
    # the command line before `-t` / `-s reload`: "nginx", "sudo nginx", "nginx -p P -c C"
    command: str = "nginx"
    template: str = ""  # Jinja2 template, relative to the config file; empty: bundled default
    target: str = "/etc/nginx/conf.d/{app}.conf"  # the rendered file nginx includes
    listen: str = "80"  # the front door: what the rendered server block listens on
    server_name: str = "_"
    verify_path: str = ""  # checked through the front door after a reload; default health.path
    verify_timeout: float = 10.0
    error_log: str = ""  # scanned for [emerg] after reload: catches what `nginx -t` cannot
    pid_file: str = "/run/nginx.pid"  # the master's pid: we wait for the old workers to retire
    drain_timeout: float = 30.0  # max wait for in-flight requests before stopping a slot
    mode: str = "reload"  # reload | lua (see README: switching without a reload)
    control_port: int = 0  # lua mode: loopback port of the control endpoint


@dataclass(frozen=True)
class Ssh:
    user: str = ""
    port: int = 22
    key_file: str = ""
    known_hosts: str = "~/.ssh/known_hosts"
    accept_unknown_hosts: bool = False  # explicit, logged opt-out of host-key checking
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    keepalive: int = 15


@dataclass(frozen=True)
class HooksCfg:
    dir: str = "hooks"  # relative to the config file
    timeout: float = 300.0


@dataclass(frozen=True)
class Config:
    app: str
    start: str  # e.g. "{release}/bin/runner {port}"
    artifact: str = ""  # default for --artifact
    artifact_name: str = ""  # file name inside a release for single-file artifacts
    keep_releases: int = 5
    hosts: Hosts = field(default_factory=Hosts)
    slots: Slots = field(default_factory=Slots)
    paths: Paths = field(default_factory=Paths)
    health: Health = field(default_factory=Health)
    process: Process = field(default_factory=Process)
    nginx: Nginx = field(default_factory=Nginx)
    ssh: Ssh = field(default_factory=Ssh)
    hooks: HooksCfg = field(default_factory=HooksCfg)
    env: dict[str, str] = field(default_factory=dict)
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
    def verify_path(self) -> str:
        return self.nginx.verify_path or self.health.path


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
    if not path.exists():
        raise ConfigError(source, "", "config file not found (pass --config PATH or set "
                                      "BLUEGREEN_CONFIG)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    origins: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            parts = name[len(ENV_PREFIX):].split("__")
            if parts[0].lower() == "env" and len(parts) == 2:
                dotted = f"env.{parts[1]}"  # the app's own variable names keep their case
            else:
                dotted = ".".join(p.lower() for p in parts)
            _set_dotted(raw, dotted, _override_value(dotted, value))
            origins[dotted] = f"environment {name}"
    for item in overrides or []:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError("--set", item.partition("=")[0],
                              "expected KEY=VALUE, e.g. health.timeout=90")
        _set_dotted(raw, dotted.strip(), _override_value(dotted.strip(), value))
        origins[dotted.strip()] = f"--set {dotted.strip()}"
    return from_dict(raw, source=source, base_dir=str(path.resolve().parent), origins=origins)


def from_dict(
    raw: dict[str, Any],
    *,
    source: str = "<dict>",
    base_dir: str = ".",
    origins: dict[str, str] | None = None,
) -> Config:
    origins = origins or {}
    values = _build(Config, raw, "", source, origins, skip={"source", "base_dir"})
    cfg = Config(**values, source=source, base_dir=base_dir)
    _check_semantics(cfg, origins)
    return cfg


def _where(key: str, source: str, origins: dict[str, str]) -> str:
    """The override that set this key (or a key under it), else the file."""
    if key in origins:
        return origins[key]
    for dotted, origin in origins.items():
        if dotted.startswith(key + "."):
            return origin
    return source


def _build(cls: type, raw: Any, prefix: str, source: str, origins: dict[str, str],
           skip: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(_where(prefix, source, origins), prefix, "expected a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name not in (skip or set())}
    for key in raw:
        if key not in known:
            dotted = f"{prefix}{key}"
            raise ConfigError(_where(dotted, source, origins), dotted,
                              f"unknown key (known here: {', '.join(sorted(known))})")
    out: dict[str, Any] = {}
    for name, f in known.items():
        dotted = f"{prefix}{name}"
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(source, dotted, "required key is missing")
            continue
        out[name] = _coerce(hints[name], raw[name], dotted, source, origins)
    return out


def _coerce(tp: Any, value: Any, key: str, source: str, origins: dict[str, str]) -> Any:
    where = _where(key, source, origins)
    if is_dataclass(tp):
        return tp(**_build(tp, value, key + ".", source, origins))
    origin = get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, key, f"expected a number (seconds), got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(
                "listen"):
            return str(value)  # `listen = 8080` is natural to write
        if not isinstance(value, str):
            raise ConfigError(where, key, f"expected a string, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if item_tp is HostSpec:
            return _hosts(value, key, where)
        if not isinstance(value, list):
            raise ConfigError(where, key, f"expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]", source, origins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, key, f"expected a table of NAME = \"value\", got {value!r}")
        out = {}
        for k, v in value.items():
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                # no value in the message: [env] often holds secrets
                raise ConfigError(where, f"{key}.{k}", f"expected a string, got a "
                                                       f"{type(v).__name__}")
            out[str(k)] = str(v)
        return out
    raise ConfigError(where, key, f"unsupported type {tp}")  # a bug in this module


def _hosts(value: Any, key: str, where: str) -> list[HostSpec]:
    """Hosts are "local", "host", "user@host:port", or tables with the HostSpec fields."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(where, key, "expected a list of hosts, e.g. [\"local\"] or "
                                      "[\"deploy@app1:22\"]")
    out = []
    for i, item in enumerate(value):
        ikey = f"{key}[{i}]"
        if isinstance(item, str):
            out.append(parse_host(item, ikey, where))
        elif isinstance(item, dict):
            allowed = {f.name for f in fields(HostSpec)}
            for k in item:
                if k not in allowed:
                    raise ConfigError(where, f"{ikey}.{k}",
                                      f"unknown key (known here: {', '.join(sorted(allowed))})")
            if not isinstance(item.get("address"), str) or not item["address"]:
                raise ConfigError(where, f"{ikey}.address", "required: the host's address")
            for k in ("name", "user", "root", "upstream"):
                if k in item and not isinstance(item[k], str):
                    raise ConfigError(where, f"{ikey}.{k}", f"expected a string, got {item[k]!r}")
            if "port" in item and (isinstance(item["port"], bool)
                                   or not isinstance(item["port"], int)):
                raise ConfigError(where, f"{ikey}.port", f"expected an integer, got "
                                                         f"{item['port']!r}")
            out.append(HostSpec(**item))
        else:
            raise ConfigError(where, ikey, f"expected a host string or table, got {item!r}")
    return out


def parse_host(text: str, key: str = "host", where: str = "<host>") -> HostSpec:
    if text == "local":
        return HostSpec("local")
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[0-9a-fA-F:]+\]|[^:@\s\[\]]+)(?::(\d+))?", text)
    if not m:
        raise ConfigError(where, key, f"cannot parse host {text!r}: expected local, HOST, "
                                      "USER@HOST or USER@HOST:PORT")
    user, address, port = m.groups()
    return HostSpec(address.strip("[]"), user=user or "", port=int(port) if port else 0)


def _check_semantics(cfg: Config, origins: dict[str, str]) -> None:
    def fail(key: str, problem: str, *related: str) -> None:
        """Blame the override that set `key` or a related key, else the file."""
        where = next((_where(k, cfg.source, origins) for k in (key, *related)
                      if _where(k, cfg.source, origins) != cfg.source), cfg.source)
        raise ConfigError(where, key, problem)

    if not _NAME_RE.match(cfg.app):
        fail("app", "expected a short name of letters, digits, '.', '_' or '-'")
    if not cfg.start.strip():
        fail("start", "expected the start command, e.g. \"{release}/bin/runner {port}\"")
    try:
        cfg.start.format(release="r", port=1, slot="s", app="a", artifact="f", version="v")
    except (KeyError, IndexError, ValueError) as exc:
        fail("start", f"unknown placeholder {exc}; use {{release}} {{port}} {{slot}} {{app}} "
                      "{artifact} {version}")
    for slot in SLOT_NAMES:
        port = cfg.port_of(slot)
        if not 1 <= port <= 65535:
            fail(f"slots.{slot}", f"expected a TCP port 1-65535, got {port}")
    if cfg.slots.blue == cfg.slots.green:
        fail("slots.green", f"blue and green must use different ports (both "
                            f"{cfg.slots.blue})", "slots.blue")
    if cfg.process.backend not in ("plain", "supervisor", "systemd"):
        fail("process.backend", "expected plain, supervisor or systemd")
    if cfg.process.backend == "supervisor" and not cfg.process.supervisor_conf:
        fail("process.supervisor_conf", "required with backend = \"supervisor\": the path of "
                                        "supervisord.conf on the hosts")
    if cfg.nginx.mode not in ("reload", "lua"):
        fail("nginx.mode", "expected reload or lua")
    if cfg.nginx.mode == "lua" and not cfg.nginx.control_port:
        fail("nginx.control_port", "required with mode = \"lua\": a free loopback port")
    if cfg.nginx.mode == "lua":
        for i, h in enumerate(cfg.hosts.app):
            addr = h.upstream or ("127.0.0.1" if h.is_local else h.address)
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                fail(f"hosts.app[{i}]", f"lua mode routes by IP address and {addr!r} is a "
                                        "name: give the host `upstream = \"<its IP>\"`")
    if not cfg.health.path.startswith("/"):
        fail("health.path", "expected a path starting with /, e.g. /health")
    if cfg.health.successes < 1:
        fail("health.successes", "expected at least 1")
    if cfg.keep_releases < 2:
        fail("keep_releases", "expected at least 2 (the live and the warm release)")
    if not cfg.hosts.app:
        fail("hosts.app", "expected at least one app host")
    for k in cfg.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            fail(f"env.{k}", "not a valid environment variable name")
    try:
        cfg.nginx.target.format(app=cfg.app)
    except (KeyError, IndexError, ValueError):
        fail("nginx.target", "only the {app} placeholder is allowed")


# ---------------------------------------------------------------- overrides


def _override_value(dotted: str, text: str) -> Any:
    """App environment values stay verbatim strings (a secret is never reinterpreted as a
    number, a date or a boolean); everything else is read as a TOML value."""
    return text if dotted.startswith("env.") else _parse_scalar(text)


def _parse_scalar(text: str) -> Any:
    """`--set health.timeout=90` gives 90, `--set hosts.app=a,b` a string split later."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError("override", dotted, f"{part} is not a table")
        node = nxt
    node[parts[-1]] = value
