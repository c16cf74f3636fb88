"""The one binder every TOML file of bluegreen goes through (bluegreen.toml and
automation.toml): plain dataclasses describe the file, `setting()` adds the checks of a key,
and `Binder` turns the TOML tree into those dataclasses or raises ConfigError(where, dotted
key, what was expected). Unknown keys are errors (fail closed).

A few dozen lines of standard library on purpose: `python -m bluegreen switch` must start
fast, and pydantic or cattrs would cost more import time than the whole switch.
"""

from __future__ import annotations

import math
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from bluegreen.errors import ArgumentError, ConfigError

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
