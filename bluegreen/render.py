"""The router's config file, rendered from a template. Pure: no host, no I/O but the template.

The marker line (`# bluegreen-live: slot=... port=... release=... shape=...`) is how every
other part reads an installed file back: which slot it routes to, which release, and its
shape (a hash of everything but the live slot, so lua mode can tell a plain flip from a real
config change that needs a reload).

Two integrations: `server` renders one file holding a whole server block; `include` renders
the same template three times (`part` = http, server, location): the http-level file (the
target, with the marker) and two snippets the user's own server block includes. The
snippets never depend on the live slot, so a switch rewrites only the target.
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
DEFAULT_TEMPLATES = {("server", "reload"): TEMPLATES / "bluegreen.conf.j2",
                     ("server", "lua"): TEMPLATES / "bluegreen-lua.conf.j2",
                     ("include", "reload"): TEMPLATES / "bluegreen-include.conf.j2",
                     ("include", "lua"): TEMPLATES / "bluegreen-include-lua.conf.j2"}
SNIPPET_PARTS = ("server", "location")
_VAR_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


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


def effective_mode(cfg: Config, mode: str | None = None) -> str:
    """reload or lua: what a router asked for, else what config says; `auto` before any
    router has asked nginx renders the reload template (it works on any nginx)."""
    chosen = mode or cfg.nginx.mode
    return chosen if chosen in ("reload", "lua") else "reload"


def template_context(cfg: Config, live_slot: str, release: str, version: str,
                     generation: int = 0, shape: str = "", part: str = "http"
                     ) -> dict[str, Any]:
    live_port = cfg.port_of(live_slot)
    return {
        "app": cfg.app,
        # the app's name as part of an nginx variable name (which takes [A-Za-z0-9_] only)
        "var": _VAR_UNSAFE.sub("_", cfg.app),
        "live_slot": live_slot,
        "live_port": live_port,
        "idle_slot": other_slot(live_slot),
        "idle_port": cfg.port_of(other_slot(live_slot)),
        "slots": {"blue": cfg.slots.blue, "green": cfg.slots.green},
        "servers": [f"{_bracket(upstream_address(h))}:{live_port}" for h in cfg.hosts.app],
        "app_hosts": [upstream_address(h) for h in cfg.hosts.app],
        "listen": cfg.nginx.listen,
        "server_name": cfg.nginx.server_name,
        "control_port": cfg.nginx.control,
        "control_host": control_host(cfg),
        # whole seconds: nginx reads "3600s", lua's set_timeouts reads 3600
        "stream_timeout": max(1, round(cfg.nginx.stream_timeout)),
        "integration": cfg.nginx.integration,
        "part": part,
        "snippets": cfg.nginx_snippets,
        "release": release,
        "version": version,
        # grows with every rendering: in lua mode a reload of an older file never wins
        "generation": generation,
        "marker": (f"bluegreen-live: slot={live_slot} port={live_port} release={release}"
                   + (f" shape={shape}" if shape else "")),
    }


def control_host(cfg: Config) -> str:
    """The Host the lua control server answers to: apps sharing a control port each get
    their own server block by name, so one app's switch can never reach another's zone."""
    return f"bluegreen-{cfg.app}"


def template_path(cfg: Config, mode: str | None = None) -> Path:
    return cfg.resolve(cfg.nginx.template) if cfg.nginx.template else \
        DEFAULT_TEMPLATES[(cfg.nginx.integration, effective_mode(cfg, mode))]


def _render_raw(cfg: Config, ctx: dict[str, Any], mode: str | None = None) -> str:
    path = template_path(cfg, mode)
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


def render_snippets(cfg: Config, mode: str | None = None) -> dict[str, str]:
    """include integration: {path: text} of the server and location snippets. They do not
    depend on the live slot (blue is as good as any), so a switch leaves them alone."""
    return {path: _render_raw(cfg, template_context(cfg, "blue", "", "", 0, part=part), mode)
            for part, path in cfg.nginx_snippets.items()}


def render(cfg: Config, live_slot: str, release: str, version: str,
           generation: int | None = None, mode: str | None = None) -> str:
    """Render the template (the http-level file, the target); a template error names the
    file and line, before any host is touched. `mode` is the router's (reload or lua)."""
    base = _render_raw(cfg, template_context(cfg, "blue", "", "", 0), mode)
    # the snippets count in the shape: a change to them needs a reload in lua mode too
    snippets = render_snippets(cfg, mode)
    shape = hashlib.sha256("\0".join([base, *snippets.values()]).encode()).hexdigest()[:12]
    gen = int(time.time() * 1000) if generation is None else generation
    text = _render_raw(cfg, template_context(cfg, live_slot, release, version, gen, shape),
                       mode)
    if not MARKER_RE.search(text):
        raise BluegreenError(f"nginx template {template_path(cfg, mode)} does not render the "
                             "marker line (`# {{ marker }}`)", phase="render",
                             hint="add `# {{ marker }}`: status and safety checks read it")
    return text
