"""Read-only views: status and releases. One data model each, printed as text or JSON.

Nothing here takes the lock or changes a host.
"""

from __future__ import annotations

import time
from typing import Any

from bluegreen import health, lock, release
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import Host
from bluegreen.process import backend_for
from bluegreen.render import parse_marker
from bluegreen.routers import Router, router_for
from bluegreen.state import read_history, read_state


def status(cfg: Config, fleet: Fleet, history: int = 10) -> dict[str, Any]:
    primary = fleet.primary
    layout = fleet.layout(primary)
    state = read_state(primary, layout, cfg.app)
    owner = lock.status(primary, layout)
    backend = backend_for(cfg)

    def host_view(h: Host) -> dict[str, Any]:
        view = {}
        for slot in ("blue", "green"):
            try:
                running = backend.running(h, slot)
                probe = health.probe(h, cfg.port_of(slot), cfg.health) if running else None
                view[slot] = {"running": running,
                              "healthy": bool(probe and probe.ok),
                              "probe": probe.detail if probe else "not running"}
            except BluegreenError as exc:
                view[slot] = {"running": None, "healthy": False, "probe": exc.what}
        return view

    def traffic_view(router: Router) -> dict[str, Any]:
        routed = router.routed()
        marker = parse_marker(router.installed())
        return {"routes_to": routed.slot or None, "file_says": routed.file_slot or None,
                "release": marker.release if marker else None}

    routers = {h.label: router_for(cfg, h) for h in fleet.traffic_hosts}
    hosts = fleet.on_all(fleet.app_hosts, "status", host_view)
    routes = fleet.on_all(fleet.traffic_hosts, "status", lambda h: traffic_view(routers[h.label]))
    return {
        "app": cfg.app,
        "live": state.live or None,
        "previous": state.previous or None,
        "slots": {name: {**rec.__dict__, "port": cfg.port_of(name)}
                  for name, rec in state.slots.items()},
        "app_hosts": dict(zip([h.label for h in fleet.app_hosts], hosts, strict=True)),
        "traffic_hosts": dict(zip(list(routers), routes, strict=True)),
        "consistent": all(r["routes_to"] == (state.live or None) for r in routes),
        "lock": owner.__dict__ if owner else None,
        "history": read_history(primary, layout, history),
    }


def releases(cfg: Config, fleet: Fleet) -> dict[str, list[dict[str, Any]]]:
    primary = fleet.primary
    state = read_state(primary, fleet.layout(primary), cfg.app)
    in_slot = {rec.release: slot for slot, rec in state.slots.items() if rec.release}
    out = {}
    for h in fleet.app_hosts:
        out[h.label] = [{"release": name, "mtime": mtime, "slot": in_slot.get(name, ""),
                         "live": in_slot.get(name) == state.live}
                        for name, mtime in release.list_releases(h, fleet.layout(h))]
    return out


def format_releases(result: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for host, rows in result.items():
        lines.append(f"{host}:")
        for r in rows:
            tag = f"  <- {r['slot']}{' (live)' if r['live'] else ''}" if r["slot"] else ""
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"]))
            lines.append(f"  {r['release']:<40} {when}{tag}")
    return "\n".join(lines)


def format_status(s: dict[str, Any]) -> str:
    lines = [f"app {s['app']}: live slot {s['live'] or '(none)'}"
             + ("" if s["consistent"] else "   !! nginx disagrees with recorded state")]
    for name, rec in s["slots"].items():
        mark = "*" if name == s["live"] else " "
        lines.append(f" {mark} {name:<5} port {rec['port']:<5} {rec['version'] or '-':<14} "
                     f"{rec['release'] or '-':<36} {rec['status']}")
    for host, slots in s["app_hosts"].items():
        parts = [f"{slot}={'up' if v['running'] else 'down'}"
                 f"{'/healthy' if v['healthy'] else ('/' + v['probe'] if v['running'] else '')}"
                 for slot, v in slots.items()]
        lines.append(f"   app host {host}: {', '.join(parts)}")
    for host, t in s["traffic_hosts"].items():
        lines.append(f"   traffic host {host}: nginx routes to {t['routes_to'] or '(nothing)'}")
    if s["lock"]:
        lines.append(f"   LOCKED by {s['lock']['who']} ({s['lock']['action']}) - `fab unlock` "
                     "if that run is dead")
    if s["history"]:
        lines.append("   recent:")
        for h in s["history"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("at", 0)))
            what = f"{h.get('from_slot') or '-'}->{h.get('to_slot') or '-'}"
            err = f" [{h.get('phase')}] {str(h.get('error', '')).splitlines()[0][:80]}" \
                if h.get("result") == "failed" else ""
            label = h.get("version") or h.get("release") or ""
            lines.append(f"     {when} {h.get('action', '?'):<8} {label:<14} "
                         f"{what:<12} {h.get('result', '?'):<6} {h.get('seconds', '')}s "
                         f"{h.get('who', '')}{err}")
    return "\n".join(lines)
