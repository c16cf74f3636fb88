"""The typed config: bluegreen.toml, overridden by environment and command line.

Precedence, lowest first: built-in defaults < bluegreen.toml < BLUEGREEN__SECTION__KEY
environment variables < --set section.key=value on the command line. Overrides land in the
raw TOML tree before validation, so an override is checked exactly like a file value and an
error names where the bad value came from.

This module also holds the one binder every TOML file of bluegreen goes through (this one
and automation.toml): plain dataclasses describe the file, `setting()` adds the checks of a
key, and `Binder` turns the TOML tree into those dataclasses or raises
ConfigError(where, dotted key, what was expected). Unknown keys are errors (fail closed).
It is a few dozen lines of standard library on purpose: `python -m bluegreen switch` must
start fast, and pydantic or cattrs would cost more import time than the whole switch.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from bluegreen.errors import ArgumentError, ConfigError

ENV_PREFIX = "BLUEGREEN__"
SLOT_NAMES = ("blue", "green")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# The longest duration any key may ask for (about 116 days): more is a typo, and would
# overflow the operating system's timeouts (socket, thread waits) far from the config.
MAX_SECONDS = 10_000_000.0


# ================================================================ the binder


def setting(default: Any = MISSING, **checks: Any) -> Any:
    """A dataclass field plus what the binder checks once the value has the right type.

    Checks: `gt`, `ge`, `lt`, `le` (numbers); `port=True` (a TCP port 1-65535) or
    `port="what 0 means"` (0 allowed too); `choices` (a tuple of strings); `pattern` (a
    compiled regex the whole string must match); `nonempty`; `one_line` (no line breaks or
    control characters: the value ends up in a header, a status line or a template);
    `check` (a function of the value that returns the value to keep, or raises ValueError
    with the problem). Presentation: `what` (the expectation, in words), `range` (the
    expectation when only a bound is broken: "at least 2 (...)"), `unit`
    ("seconds"), `secret` (never echo the value). Forms: `split` (a list may be given as
    "a,b"), `number_text` (a number is accepted for a string: `listen = 8080`), `items`
    (checks for each element of a list or value of a table). A list or table default
    is `field(default_factory=..., metadata={...checks})`.
    """
    return field(default=default, metadata=checks)


def seconds(default: float, **checks: Any) -> Any:
    """A duration in seconds: a finite number, at most MAX_SECONDS, > 0 unless told."""
    if "ge" not in checks:
        checks.setdefault("gt", 0)
    checks.setdefault("le", MAX_SECONDS)
    return setting(default, unit="seconds", **checks)


TextForm = Callable[[str, str, str], Any]  # (text, dotted key, where) -> a dataclass instance


class Binder:
    """Turns a TOML tree into dataclasses, or raises ConfigError naming where the bad value
    came from (the file, or the override that set it), its dotted key and what was expected.

    `origins` maps dotted keys set by overrides to a label ("--set health.timeout",
    "environment BLUEGREEN__HEALTH__TIMEOUT"). `text_forms` lets a dataclass also be
    written as a string (a host as "deploy@app1:22"). `base_dir` resolves relative Paths.
    """

    def __init__(self, source: str, *, origins: Mapping[str, str] | None = None,
                 text_forms: Mapping[type, TextForm] | None = None,
                 base_dir: Path | None = None) -> None:
        self.source = source
        self.origins = dict(origins or {})
        self.text_forms = dict(text_forms or {})
        self.base_dir = base_dir

    # ---- where a value came from, and the error that says so
    def where(self, key: str) -> str:
        """The override that set this key (or a table or list holding it, or a key under
        it), else the file."""
        if key in self.origins:
            return self.origins[key]
        for dotted, origin in self.origins.items():
            if key.startswith((dotted + ".", dotted + "[")):
                return origin
        for dotted, origin in self.origins.items():
            if dotted.startswith(key + "."):
                return origin
        return self.source

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.where(key), key, problem)

    # ---- tables
    def bind(self, cls: type, raw: Any, key: str = "", **given: Any) -> Any:
        """An instance of dataclass `cls` from the table `raw`; `given` fills fields that
        are not read from the file (the source, the base directory)."""
        return cls(**self.values(cls, raw, key, skip=set(given)), **given)

    def values(self, cls: type, raw: Any, key: str = "", skip: set[str] | None = None
               ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(key, f"expected a table, {_got(raw)}")
        hints = get_type_hints(cls)
        known = {f.name: f for f in fields(cls) if f.init and f.name not in (skip or set())}
        for name in raw:
            if name not in known:
                raise self.error(join_key(key, name),
                                 f"unknown key (known here: {', '.join(sorted(known))})")
        out: dict[str, Any] = {}
        for name, f in known.items():
            dotted = join_key(key, name)
            if name not in raw:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise self.error(dotted, "required key is missing (expected "
                                             f"{_describe(hints[name], f.metadata)})")
                continue
            out[name] = self.value(hints[name], raw[name], dotted, f.metadata)
        return out

    # ---- one value
    def value(self, tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        out = self._typed(tp, value, key, meta)
        return self._checked(out, key, meta)

    def _typed(self, tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            return self._union(tp, value, key, meta)
        if is_dataclass(tp):
            if isinstance(value, str) and tp in self.text_forms:
                return self.text_forms[tp](value, key, self.where(key))
            if not isinstance(value, dict):
                kind = "a string or a table" if tp in self.text_forms else _describe(tp, meta)
                raise self.error(key, f"expected {kind}, {_got(value)}")
            return self.bind(tp, value, key)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(key, f"expected true or false, {_got(value, meta)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise self.error(key, f"expected a finite number, {_got(value, meta)}")
            return number
        if tp is str or tp is Path:
            if (meta.get("number_text") and isinstance(value, (int, float))
                    and not isinstance(value, bool)):
                value = str(value)
            if not isinstance(value, str):
                raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")
            return value if tp is str else self.path(value, key)
        if origin in (list, tuple):
            args = get_args(tp)
            item_tp = args[0]
            if isinstance(value, str) and meta.get("split"):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list):
                raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")
            items = meta.get("items", {})
            out = [self.value(item_tp, v, f"{key}[{i}]", items) for i, v in enumerate(value)]
            return out if origin is list else tuple(out)
        if origin is dict:
            _, item_tp = get_args(tp)
            if not isinstance(value, dict):
                raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")
            items = meta.get("items", {})
            return {str(k): self.value(item_tp, v, join_key(key, str(k)), items)
                    for k, v in value.items()}
        raise self.error(key, f"unsupported type {tp!r}")  # a bug in the dataclass, not input

    def _union(self, tp: Any, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        for alternative in get_args(tp):
            if alternative is type(None):
                continue  # TOML has no null: None is only ever a default
            try:
                return self._typed(alternative, value, key, {**meta, "what": ""})
            except ConfigError:
                continue
        raise self.error(key, f"expected {_describe(tp, meta)}, {_got(value, meta)}")

    def path(self, text: str, key: str) -> Path:
        """A path from the file: ~ expanded, relative to base_dir when there is one."""
        try:
            path = Path(text).expanduser()
            if path.is_absolute() or self.base_dir is None:
                return path
            return (self.base_dir / path).resolve()
        except (RuntimeError, ValueError, OSError) as exc:  # ~nobody/x, a NUL byte, a loop
            raise self.error(key, f"expected a path, got {text!r} ({exc})") from None

    def _checked(self, value: Any, key: str, meta: Mapping[str, Any]) -> Any:
        if not meta:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _range_problem(value, meta)
            if problem:
                raise self.error(key, problem)
        if isinstance(value, str):
            if meta.get("nonempty") and not value.strip():
                raise self.error(key, f"expected {_describe(str, meta)}, got an empty string")
            if meta.get("one_line"):
                bad = first_control_char(value)
                if bad is not None:
                    raise self.error(key, f"expected one line of printable text, but it "
                                          f"contains {_char_name(value[bad])}")
            choices = meta.get("choices")
            if choices and value not in choices:
                raise self.error(key, f"expected {_either(choices)}, {_got(value, meta)}")
            pattern = meta.get("pattern")
            if pattern is not None and not pattern.fullmatch(value):
                raise self.error(key, f"expected {_describe(str, meta)}, {_got(value, meta)}")
        if isinstance(value, (list, tuple, dict)) and meta.get("nonempty") and not value:
            raise self.error(key, f"expected {_describe(type(value), meta)}, got an empty one")
        check = meta.get("check")
        if check is not None:
            try:
                value = check(value)
            except ValueError as exc:
                raise self.error(key, str(exc)) from None
        return value


def join_key(prefix: str, name: str) -> str:
    """`health` + `timeout` -> `health.timeout`; odd names are quoted as TOML would."""
    part = name if _BARE_KEY_RE.fullmatch(name) else '"' + name.encode(
        "unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return f"{prefix}.{part}" if prefix else part


_TYPE_WORDS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number",
                               str: "a string", Path: "a path (a string)"}


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a key expects, in words."""
    if meta.get("what"):
        return str(meta["what"])
    if meta.get("choices"):
        return _either(meta["choices"])
    if tp is float and meta.get("unit"):
        return f"a number of {meta['unit']}"
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, {}) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple) or tp in (list, tuple):
        args = get_args(tp)
        if args and is_dataclass(args[0]):
            return "an array of tables ([[...]])"
        item = _describe(args[0], {}) if args else "values"
        return "a list of " + re.sub(r"^an? ", "", item) + ("s" if args else "")
    if origin is dict or tp is dict:
        return 'a table of NAME = "value"'
    if is_dataclass(tp):
        return "a table"
    return str(tp)


def _range_problem(value: float, meta: Mapping[str, Any]) -> str:
    port = meta.get("port")
    if port:
        low = 0 if isinstance(port, str) else 1
        if not low <= value <= 65535:
            zero = f", or 0 ({port})" if isinstance(port, str) else ""
            return f"expected a TCP port 1-65535{zero}, got {_number(value)}"
        return ""
    broken = [(op, meta[name]) for op, name in _BOUNDS
              if meta.get(name) is not None and not _BOUND_OK[op](value, meta[name])]
    if not broken:
        return ""
    if meta.get("range") or meta.get("what"):
        return f"expected {meta.get('range') or meta['what']}, got {_number(value)}"
    noun = _describe(float if "unit" in meta else type(value), meta)
    text = " and ".join(f"{op} {_number(bound)}" for op, bound in broken)
    return f"expected {noun} {text}, got {_number(value)}"


_BOUNDS = ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le"))
_BOUND_OK: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, b: v > b, ">=": lambda v, b: v >= b,
    "<": lambda v, b: v < b, "<=": lambda v, b: v <= b}


def _number(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a huge integer"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _either(choices: tuple[str, ...]) -> str:
    names = [str(c) for c in choices]
    if len(names) <= 2:
        return " or ".join(names)
    return "one of " + ", ".join(names[:-1]) + " or " + names[-1]


def _got(value: Any, meta: Mapping[str, Any] | None = None) -> str:
    """`got ...` for a message; a secret's value is never shown, only its kind."""
    kind = ("a boolean" if isinstance(value, bool) else "an integer" if isinstance(value, int)
            else "a number" if isinstance(value, float) else "a string" if isinstance(value, str)
            else "a list" if isinstance(value, list) else "a table" if isinstance(value, dict)
            else "a date/time" if type(value).__module__ == "datetime"
            else type(value).__name__)
    if (meta or {}).get("secret") or isinstance(value, (list, dict)):
        return f"got {kind}"
    if isinstance(value, bool):
        return f"got {str(value).lower()} (a boolean)"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"got {shown!r} (a string)" if value else "got an empty string"
    if isinstance(value, (int, float)):
        return f"got {_number(value)}"
    return f"got {kind} ({value})"


_LINE_BREAKS = "\u0085\u2028\u2029"  # NEL and the Unicode line/paragraph separators
_BIDI_CONTROLS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def first_control_char(text: str) -> int | None:
    """Index of the first character that breaks a line or controls a terminal, or None."""
    for i, ch in enumerate(text):
        code = ord(ch)
        if code < 32 or 127 <= code < 160 or ch in _LINE_BREAKS or ch in _BIDI_CONTROLS:
            return i
    return None


def _char_name(ch: str) -> str:
    names = {"\n": "a newline (\\n)", "\r": "a carriage return (\\r)", "\t": "a tab (\\t)",
             "\x1b": "an escape character (\\x1b, terminal control)", "\x00": "a NUL byte"}
    if ch in names:
        return names[ch]
    if ch in _LINE_BREAKS:
        return f"a line separator (U+{ord(ch):04X})"
    if ch in _BIDI_CONTROLS:
        return f"a text-direction control (U+{ord(ch):04X})"
    return f"a control character (U+{ord(ch):04X})"


def check_label(what: str, value: str) -> str:
    """A label a person supplies (`--version`, `--who`) is one line of printable text.

    It is written into the lock, the history and `fab status`, one record per line: a
    newline would forge an extra line there, and an escape sequence would repaint the
    terminal of whoever reads it. Returns the value unchanged, or raises ArgumentError
    (a ConfigError, exit 2) that names the flag and why.
    """
    bad = first_control_char(value)
    if bad is not None:
        raise ArgumentError(
            what, f"contains {_char_name(value[bad])} at character {bad + 1}; it is written "
                  "into the lock, the history and `fab status` as one line, so it must be "
                  "printable text without line breaks or control characters",
            hint=f"pass {what} as one line of text, e.g. {what} "
                 + ("1.4.2" if "version" in what else "alice"))
    return value


# ================================================================ reading a TOML file


def read_toml(path: Path, *, what: str = "config file", hint: str = "pass --config PATH"
              ) -> dict[str, Any]:
    """The TOML tree of `path`, or a ConfigError naming the file (and the line, when the
    text is at fault): missing, a directory, unreadable, not UTF-8, not TOML."""
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "", f"{what} not found ({hint})") from None
    except IsADirectoryError:
        raise ConfigError(source, "", f"is a directory, not a {what} ({hint}, the path "
                                      "of the file itself)") from None
    except PermissionError:
        raise ConfigError(source, "", f"cannot read the {what}: permission denied") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the {what}: "
                                      f"{exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(source, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line "
                                      f"{line}, column {column} ({exc.reason}); save the "
                                      "file as UTF-8", line=line) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problem, line, column = _toml_position(exc)
        where = f" at line {line}, column {column}" if line else ""
        raise ConfigError(source, "", f"not valid TOML{where}: {problem}",
                          line=line or None) from None
    except (ValueError, RecursionError) as exc:  # a 5000-digit integer, arrays nested 1000 deep
        raise ConfigError(source, "", f"not valid TOML: {type(exc).__name__}: "
                                      f"{str(exc)[:120]}") from None


def _toml_position(exc: tomllib.TOMLDecodeError) -> tuple[str, int, int]:
    line = getattr(exc, "lineno", None)
    column = getattr(exc, "colno", None)
    message = str(getattr(exc, "msg", "") or exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        message = message[:m.start()]
        line, column = line or int(m[1]), column or int(m[2])
    return message, int(line or 0), int(column or 0)


# ================================================================ bluegreen.toml


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
    switched (lua mode): a request carrying the token in this header or cookie is routed
    to the ready slot. The token itself never goes in a file: `token_env` names the
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
    a cohort cookie, goes to the new slot (lua mode). The cookie keeps a user on one side."""

    cookie: str = setting("bluegreen_cohort", pattern=_COOKIE_NAME_RE,
                          what="a cookie name (letters, digits, _)")
    # the default of `--step`: how long each step is watched before the next one
    step: float = seconds(60.0)


@dataclass(frozen=True)
class LockCfg:
    # a lock from another machine whose heartbeat is older than this is taken over; the
    # holder refreshes it at every phase, so it must outlast the longest phase (health)
    lease: float = seconds(300.0)


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
    ssh: Ssh = field(default_factory=Ssh)
    hooks: HooksCfg = field(default_factory=HooksCfg)
    lock: LockCfg = field(default_factory=LockCfg)
    watch: Watch = field(default_factory=Watch)
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
