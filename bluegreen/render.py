"""The router's config file, rendered from a template. Pure: no host, no I/O but the template.

The marker line (`# bluegreen-live: slot=... port=... release=... shape=...`) is how every
other part reads an installed file back: which slot it routes to, which release, and its
shape (a hash of everything but the live slot, so lua mode can tell a plain flip from a real
config change that needs a reload).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from bluegreen.config import Config, HostSpec, other_slot
from bluegreen.errors import BluegreenError

SLOT_HEADER = "X-Bluegreen-Slot"
MARKER_RE = re.compile(r"bluegreen-live: slot=(?P<slot>\w+) port=(?P<port>\d+)"
                       r"(?: release=(?P<release>\S*))?(?: shape=(?P<shape>\w*))?")
# bluegreen/templates is a link to the top-level nginx_templates/: one copy, shipped as
# package data (a wheel holds the files themselves)
TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATES = {"reload": TEMPLATES / "bluegreen.conf.j2",
                     "lua": TEMPLATES / "bluegreen-lua.conf.j2"}


@dataclass(frozen=True)
class Marker:
    slot: str
    port: int
    release: str
    shape: str


def parse_marker(text: str | None) -> Marker | None:
    """What an installed config routes to, or None when there is no bluegreen config."""
    if not text:
        return None
    m = MARKER_RE.search(text)
    return Marker(m["slot"], int(m["port"]), m["release"] or "", m["shape"] or "") if m else None


def is_lua_config(text: str | None) -> bool:
    return bool(text) and "/bluegreen/live" in text  # type: ignore[operator]


def upstream_address(spec: HostSpec) -> str:
    if spec.upstream:
        return spec.upstream
    return "127.0.0.1" if spec.is_local else spec.address


def front_door(listen: str) -> tuple[str, int]:
    """Where to knock on the traffic host itself, from the `listen` value."""
    first = listen.split()[0]
    addr, sep, port = first.rpartition(":")
    if not sep:
        return "127.0.0.1", int(first)
    addr = addr.strip("[]")
    if addr in ("", "*", "0.0.0.0", "::"):
        addr = "127.0.0.1"
    return addr, int(port)


def _bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def template_context(cfg: Config, live_slot: str, release: str, version: str,
                     generation: int = 0, shape: str = "") -> dict[str, Any]:
    live_port = cfg.port_of(live_slot)
    return {
        "app": cfg.app,
        "live_slot": live_slot,
        "live_port": live_port,
        "idle_slot": other_slot(live_slot),
        "idle_port": cfg.port_of(other_slot(live_slot)),
        "slots": {"blue": cfg.slots.blue, "green": cfg.slots.green},
        "servers": [f"{_bracket(upstream_address(h))}:{live_port}" for h in cfg.hosts.app],
        "app_hosts": [upstream_address(h) for h in cfg.hosts.app],
        "listen": cfg.nginx.listen,
        "server_name": cfg.nginx.server_name,
        "control_port": cfg.nginx.control_port,
        "release": release,
        "version": version,
        # grows with every rendering: in lua mode a reload of an older file never wins
        "generation": generation,
        "marker": (f"bluegreen-live: slot={live_slot} port={live_port} release={release}"
                   + (f" shape={shape}" if shape else "")),
    }


def template_path(cfg: Config) -> Path:
    return cfg.resolve(cfg.nginx.template) if cfg.nginx.template else \
        DEFAULT_TEMPLATES[cfg.nginx.mode]


def _render_raw(cfg: Config, ctx: dict[str, Any]) -> str:
    path = template_path(cfg)
    try:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 autoescape=False)  # noqa: S701 - nginx config, not HTML
        return env.get_template(path.name).render(**ctx)
    except jinja2.TemplateSyntaxError as exc:
        raise BluegreenError(f"nginx template {exc.filename or path}:{exc.lineno}: {exc.message}",
                             phase="render", hint="fix the template; traffic was not touched"
                             ) from exc
    except jinja2.TemplateNotFound as exc:
        raise BluegreenError(f"nginx template {path} not found", phase="render",
                             hint="check nginx.template (relative to the config file)") from exc
    except jinja2.UndefinedError as exc:
        raise BluegreenError(f"nginx template {path}: {exc}", phase="render",
                             hint="the template may use: " + ", ".join(sorted(ctx))) from exc


def render(cfg: Config, live_slot: str, release: str, version: str,
           generation: int | None = None) -> str:
    """Render the template; a template error names the file and line, before any host is
    touched."""
    shape = hashlib.sha256(_render_raw(cfg, template_context(
        cfg, "blue", "", "", 0)).encode()).hexdigest()[:12]
    gen = int(time.time() * 1000) if generation is None else generation
    text = _render_raw(cfg, template_context(cfg, live_slot, release, version, gen, shape))
    if not MARKER_RE.search(text):
        raise BluegreenError(f"nginx template {template_path(cfg)} does not render the marker "
                             "line (`# {{ marker }}`)", phase="render",
                             hint="add `# {{ marker }}`: status and safety checks read it")
    return text
