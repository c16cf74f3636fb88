"""Read-only views: status and releases. One data model each, printed as text or JSON.

Nothing here takes the lock or changes a host.
"""

from __future__ import annotations

import time
from typing import Any

from bluegreen import health, journal, lock, release
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import Host
from bluegreen.process import backend_for
from bluegreen.render import parse_marker
from bluegreen.routers import Router, router_for
from bluegreen.state import State, read_history, read_state

# `fab status` exit codes, for monitoring checks (README, "Status")
STATUS_OK = 0  # consistent, and the live slot is healthy on every app host
STATUS_UNHEALTHY = 4  # the live slot is down or unhealthy somewhere, or a host is unreachable
STATUS_INCONSISTENT = 5  # a router disagrees with recorded state, or a switch is pending


def status(cfg: Config, fleet: Fleet, history: int = 10) -> dict[str, Any]:
    """What is true now, asked of each router and each app host, beside what is recorded."""
    primary = fleet.primary
    layout = fleet.layout(primary)
    # an unreadable state or journal is itself something to show, not a reason to show
    # nothing: the routers and the slots still say what is true
    problems: list[str] = []
    try:
        state = read_state(primary, layout, cfg.app)
    except BluegreenError as exc:
        if exc.phase != "state":
            raise
        problems.append(exc.what)
        state = State(app=cfg.app)
    owner = lock.status(primary, layout)
    try:
        intent = journal.read(primary, layout)
        pending = intent.describe() if intent else None
    except BluegreenError as exc:
        if exc.phase != "recover":
            raise
        problems.append(exc.what)
        intent, pending = None, f"unreadable journal: {exc.what}"
    backend = backend_for(cfg)

    def host_view(h: Host) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for slot in ("blue", "green"):
            running = backend.running(h, slot)
            probe = health.probe(h, cfg.port_of(slot), cfg.health) if running else None
            view[slot] = {"running": running, "healthy": bool(probe and probe.ok),
                          "probe": probe.detail if probe else "not running"}
        return view

    def traffic_view(router: Router) -> dict[str, Any]:
        routed = router.routed()
        marker = parse_marker(router.installed())
        return {"routes_to": routed.slot or None, "file_says": routed.file_slot or None,
                "seen": routed.detail, "release": marker.release if marker else None}

    routers = {h.label: router_for(cfg, h) for h in fleet.traffic_hosts}
    app_hosts = {h.label: _or_unknown(lambda h=h: host_view(h)) for h in fleet.app_hosts}
    traffic = {label: _or_unknown(lambda r=r: traffic_view(r)) for label, r in routers.items()}
    live = state.live or None
    # during a rolling deploy a host may serve the other slot: state says which
    consistent = not problems and pending is None and all(
        "unknown" not in t and t["routes_to"] == (state.live_on(label) or None)
        and t["file_says"] == (state.live_on(label) or None) for label, t in traffic.items())
    healthy = bool(live) and all(
        "unknown" not in v and v[state.live_on(label) or live]["healthy"]  # type: ignore[index]
        for label, v in app_hosts.items())
    return {
        "app": cfg.app,
        "live": live,
        "previous": state.previous or None,
        "slots": {name: {**rec.__dict__, "port": cfg.port_of(name)}
                  for name, rec in state.slots.items()},
        "app_hosts": app_hosts,
        "traffic_hosts": traffic,
        "consistent": consistent,
        "healthy": healthy,
        "pending_switch": pending,
        "problems": problems,
        # which host serves what while a rolling deploy is under way (or kept partial)
        "hosts_live": {label: rec.__dict__ for label, rec in state.hosts.items()},
        "rollout": state.rollout.__dict__ if state.rollout else None,
        "lock": owner.__dict__ if owner else None,
        "history": read_history(primary, layout, history),
        "exit_code": (STATUS_INCONSISTENT if not consistent
                      else STATUS_OK if healthy or not live else STATUS_UNHEALTHY),
    }


def _or_unknown(fn: Any) -> dict[str, Any]:
    """A host we cannot ask is unknown, never "down": its slots may be serving."""
    try:
        return fn()  # type: ignore[no-any-return]
    except BluegreenError as exc:
        return {"unknown": exc.what.splitlines()[0]}


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `12h`, `7d` ago, or an ISO date/time; 0 for empty. Raises ValueError."""
    import datetime
    import re
    if not text:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]]
        return (now or time.time()) - float(m[1]) * unit
    return datetime.datetime.fromisoformat(text.strip()).timestamp()


def history(cfg: Config, fleet: Fleet, *, since: float = 0.0, action: str = "",
            limit: int = 20) -> list[dict[str, Any]]:
    """Deploys, switches, rollbacks (and recoveries, lock breaks) from the audit trail,
    oldest first, filtered; reads only the tail the filters need."""
    primary = fleet.primary
    layout = fleet.layout(primary)
    window = limit if not (since or action) else max(limit * 20, 2000)
    entries = read_history(primary, layout, window)
    picked = [e for e in entries
              if (not action or e.get("action") == action)
              and float(e.get("at", 0)) >= since]
    return picked[-limit:] if limit > 0 else picked


def format_history(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no history entries match"
    lines = []
    for h in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("at", 0)))
        what = f"{h.get('from_slot') or '-'}->{h.get('to_slot') or '-'}"
        label = h.get("version") or h.get("release") or ""
        tail = (f" [{h.get('phase')}] {str(h.get('error', '')).splitlines()[0][:80]}"
                if h.get("result") in ("failed", "interrupted")
                else f" {h['note']}" if h.get("note") else "")
        lines.append(f"{when} {h.get('action', '?'):<8} {label:<14} {what:<12} "
                     f"{h.get('result', '?'):<11} {h.get('seconds', '-')}s "
                     f"{h.get('who', '')}{tail}")
    return "\n".join(lines)


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
    verdict = ("" if s["consistent"] else "   !! the router disagrees with recorded state"
               if not s.get("pending_switch") else "   !! an interrupted switch is pending")
    if s["consistent"] and s["live"] and not s.get("healthy", True):
        verdict = "   !! the live slot is not healthy everywhere"
    lines = [f"app {s['app']}: live slot {s['live'] or '(none)'}{verdict}"]
    for name, rec in s["slots"].items():
        mark = "*" if name == s["live"] else " "
        lines.append(f" {mark} {name:<5} port {rec['port']:<5} {rec['version'] or '-':<14} "
                     f"{rec['release'] or '-':<36} {rec['status']}")
    for host, slots in s["app_hosts"].items():
        if "unknown" in slots:
            lines.append(f"   app host {host}: unknown: {slots['unknown']}")
            continue
        parts = [f"{slot}={'up' if v['running'] else 'down'}"
                 f"{'/healthy' if v['healthy'] else ('/' + v['probe'] if v['running'] else '')}"
                 for slot, v in slots.items()]
        lines.append(f"   app host {host}: {', '.join(parts)}")
    for host, t in s["traffic_hosts"].items():
        if "unknown" in t:
            lines.append(f"   traffic host {host}: unknown: {t['unknown']}")
            continue
        line = f"   traffic host {host}: routes to {t['routes_to'] or '(nothing)'}"
        rolled = (s.get("hosts_live") or {}).get(host)
        if rolled:
            line += f" (rolling deploy: {rolled['live']}, {rolled['version'] or rolled['release']})"
        if t["file_says"] != t["routes_to"]:
            line += f" (its file says {t['file_says'] or 'nothing'})"
        lines.append(f"{line}  [{t['seen']}]")
    r = s.get("rollout")
    if r:
        lines.append(f"   ROLLING DEPLOY {r['status']}: {r['version'] or r['release']} -> "
                     f"{r['slot']} on {len(r['done'])} host(s) "
                     f"({', '.join(r['done']) or 'none yet'}); the others serve "
                     f"{r['from_slot']}"
                     + (f"; failed: {', '.join(r['failed'])}" if r["failed"] else "")
                     + " - resume with the same `fab deploy --batch`, or "
                       f"`fab switch --to {r['from_slot']}`")
    for problem in s.get("problems", []):
        lines.append(f"   UNREADABLE: {problem}")
    if s.get("pending_switch"):
        lines.append(f"   PENDING: interrupted {s['pending_switch']}; the next deploy, switch "
                     "or rollback restores the committed state first")
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
