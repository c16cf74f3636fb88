"""Render nginx_templates/haproxy.cfg.j2: pure, no haproxy (tests run `haproxy -c` on it).

Takes plain values, not the Config: the driver maps config to `HaproxySite` (config keys
for haproxy do not exist yet). The marker line is the nginx templates' one, so
traffic.parse_marker / MARKER_RE read it unchanged, including `shape=`: a hash of the
rendering with the live slot fixed, so the driver can tell a plain switch (runtime API
only) from a change of hosts, ports or listen address (needs a reload).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from bluegreen.errors import BluegreenError
from bluegreen.routers.haproxy_api import (
    SHARE_BASE,
    SLOTS,
    backend_name,
    servers_for,
    tcp_address,
)

# Beside the nginx templates; the lead makes that directory the package data.
TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "haproxy.cfg.j2"  # package data
MARKER_RE = re.compile(r"bluegreen-live: slot=(?P<slot>\w+) port=(?P<port>\d+)"
                       r"(?: release=(?P<release>\S*))?(?: shape=(?P<shape>\w*))?")
_BARE_WORD = re.compile(r"^[A-Za-z0-9._:/@%+=,~-]+$")
_DURATION = re.compile(r"^\d+(us|ms|s|m|h|d)?$")


def hq(value: object) -> str:
    """A value as one haproxy config word. Single quotes are haproxy's strong quoting (no
    `${VAR}` expansion, no escapes), so anything but a quote or a control character is
    safe inside them; those two are refused rather than escaped."""
    text = str(value)
    if _BARE_WORD.match(text):
        return text
    if "'" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{text!r} cannot be written into haproxy.cfg (quote or control "
                         "character)")
    return f"'{text}'"


@dataclass(frozen=True)
class Timeouts:
    connect: str = "2s"  # loopback/LAN connects are instant; a slow one means a dead slot
    client: str = "60s"
    server: str = "60s"  # longest silence while the app computes, as proxy_read_timeout
    keepalive: str = "75s"  # idle client keep-alive, as the nginx templates
    tunnel: str = "1h"  # WebSocket / SockJS silence once upgraded


@dataclass(frozen=True)
class HaproxySite:
    """Everything the template needs that does not change on a switch."""

    app: str
    app_hosts: Sequence[tuple[str, str]]  # (label, address haproxy reaches the slots on)
    ports: dict[str, int]  # {"blue": 8081, "green": 8082}
    listen: str  # a haproxy `bind` value: "127.0.0.1:8080", ":80", "ipv6@:::80"
    admin_socket: str  # "/run/haproxy/bluegreen.sock" or "ipv4@127.0.0.1:9999"
    state_file: str  # this backend's server-state file
    health_path: str = "/health"
    health_host: str = "localhost"
    health_status: int = 200
    check_interval: str = "1s"
    standalone: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    hard_stop_after: str = "60s"
    close_spread_time: str = "5s"  # must stay below hard_stop_after
    # the canary's cohort cookie and the preview route: the names the lua router uses
    cohort_cookie: str = "bluegreen_cohort"
    preview_header: str = "X-Bluegreen-Preview"
    preview_cookie: str = "bluegreen_preview"
    # the map of preview token sha1 -> slot; "": no preview route (and no map file to
    # create: haproxy 2.6 refuses a config whose map file is missing)
    preview_map: str = ""


def preview_map_for(state_file: str, app: str) -> str:
    """The preview map lives beside the server-state file: a directory bluegreen already
    writes, and readable by the haproxy that reads the state file."""
    return f"{state_file.rpartition('/')[0]}/{app}-preview.map"


def stats_socket_bind(admin_socket: str) -> str:
    """The `stats socket` address and its options: a unix socket gets mode 600."""
    tcp = tcp_address(admin_socket)
    if tcp is None:
        return f"{hq(admin_socket.removeprefix('unix@'))} mode 600"
    host, port = tcp
    return f"ipv4@{hq(host)}:{port}"


def template_context(site: HaproxySite, live_slot: str, release: str,
                     shape: str = "", weight: int = 0) -> dict[str, Any]:
    if live_slot not in SLOTS:
        raise ValueError(f"unknown slot {live_slot!r}")
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight {weight}: expected a percent 0-100")
    for name, value in (("check_interval", site.check_interval),
                        ("hard_stop_after", site.hard_stop_after),
                        ("close_spread_time", site.close_spread_time),
                        *((f"timeouts.{k}", v) for k, v in vars(site.timeouts).items())):
        if not _DURATION.match(value):
            raise ValueError(f"{name} {value!r}: expected a haproxy duration like 2s or 500ms")
    servers = servers_for(site.app_hosts, site.ports)
    live_port = site.ports[live_slot]
    return {
        "app": site.app,
        "backend": backend_name(site.app),
        "frontend": f"{backend_name(site.app)}-front",
        "live_slot": live_slot,
        "live_port": live_port,
        "idle_slot": next(s for s in SLOTS if s != live_slot),
        "slots": dict(site.ports),
        "servers": servers,
        "listen": site.listen,
        "standalone": site.standalone,
        "stats_socket": stats_socket_bind(site.admin_socket),
        "admin_socket": site.admin_socket,
        "state_file": site.state_file,
        "health_path": site.health_path,
        "health_host": site.health_host,
        "health_status": int(site.health_status),
        "check_interval": site.check_interval,
        "timeouts": site.timeouts,
        "hard_stop_after": site.hard_stop_after,
        "close_spread_time": site.close_spread_time,
        "release": release,
        "weight": weight,
        "share_base": SHARE_BASE,
        "cohort_cookie": site.cohort_cookie,
        "preview_header": site.preview_header,
        "preview_cookie": site.preview_cookie,
        "preview_map": site.preview_map,
        # the weight after the shape, where render.MARKER_RE and WEIGHT_RE read it
        "marker": (f"bluegreen-live: slot={live_slot} port={live_port} release={release}"
                   + (f" shape={shape}" if shape else "")
                   + (f" weight={weight}" if weight else "")),
    }


def _render_raw(path: Path, ctx: dict[str, Any]) -> str:
    try:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 autoescape=False)  # noqa: S701 - haproxy config, not HTML
        env.filters["hq"] = hq
        return env.get_template(path.name).render(**ctx)
    except jinja2.TemplateSyntaxError as exc:
        raise BluegreenError(f"haproxy template {exc.filename or path}:{exc.lineno}: "
                             f"{exc.message}", phase="render",
                             hint="fix the template; traffic was not touched") from exc
    except jinja2.TemplateNotFound as exc:
        raise BluegreenError(f"haproxy template {path} not found", phase="render") from exc
    except jinja2.UndefinedError as exc:
        raise BluegreenError(f"haproxy template {path}: {exc}", phase="render",
                             hint="the template may use: " + ", ".join(sorted(ctx))) from exc


def render(site: HaproxySite, live_slot: str, release: str,
           template: Path = TEMPLATE, weight: int = 0) -> str:
    """The config with `live_slot` ready and the other slot disabled (with a canary's
    `weight`, its share in its servers' weight), marker included. The shape leaves the
    live slot and the weight out: changing either is a runtime change, not a reload."""
    shape = hashlib.sha256(_render_raw(template, template_context(
        site, "blue", "")).encode()).hexdigest()[:12]
    text = _render_raw(template, template_context(site, live_slot, release, shape, weight))
    if not MARKER_RE.search(text):
        raise BluegreenError(f"haproxy template {template} does not render the marker line "
                             "(`# {{ marker }}`)", phase="render",
                             hint="add `# {{ marker }}`: status and safety checks read it")
    return text

