"""One way to run an action, shared by `fab` tasks and the `bluegreen` command.

Loads the config, runs the flow, prints a failure the way a person needs it (what, where,
what next) and turns it into an exit code. Only expected failures (BluegreenError) are
caught; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bluegreen import config as config_mod
from bluegreen.deploy import Orchestrator, Who
from bluegreen.errors import BluegreenError


def _sigterm_as_interrupt() -> None:
    """Jenkins' abort and the webhook worker stop a deploy with SIGTERM. Turned into
    KeyboardInterrupt, it runs the same cleanup as Ctrl-C: the lock is released, a
    half-done switch is restored, state says what the slots hold."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def execute(action: str, *, config: str = "", overrides: list[str] | None = None,
            dry_run: bool = False, who: str = "", as_json: bool = False,
            artifact: str = "", version: str = "", to: str = "", history: int = 10) -> int:
    _sigterm_as_interrupt()
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    # paramiko warns about every refused direct-tcpip channel, i.e. every health probe of
    # an app that is still booting; the health phase reports what matters
    logging.getLogger("paramiko.transport").setLevel(logging.ERROR)
    try:
        cfg = config_mod.load(config or None, overrides=overrides or [])
        orch = Orchestrator(cfg, Who.from_env(who), dry_run=dry_run)
        if as_json:
            orch.report.quiet = True
        try:
            result = _dispatch(orch, action, artifact=artifact, version=version, to=to,
                               history=history)
        finally:
            orch.close()
        if dry_run:
            print("\nDRY RUN: nothing was changed. These changes would be made:")
            for line in orch.planned:
                print(f"  {line}")
        _print_result(action, result, as_json)
        return 0
    except BluegreenError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        if as_json:
            print(json.dumps({"ok": False, "error": exc.what, "phase": exc.phase,
                              "host": exc.host, "hint": exc.hint}))
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nINTERRUPTED: the lock was released; traffic is wherever the last completed "
              "phase left it. Run `fab status`, then re-run: every phase converges.",
              file=sys.stderr)
        return 130


def _dispatch(orch: Orchestrator, action: str, *, artifact: str, version: str, to: str,
              history: int) -> Any:
    if action == "deploy":
        path = artifact or orch.cfg.artifact
        if not path:
            raise BluegreenError("no artifact given", phase="upload", host="local",
                                 hint="pass --artifact PATH or set artifact in bluegreen.toml")
        return orch.deploy(orch.cfg.resolve(path) if not Path(path).is_absolute()
                           and not Path(path).exists() else Path(path), version)
    if action == "switch":
        return orch.switch(to)
    if action == "rollback":
        return orch.rollback()
    if action == "status":
        return orch.status(history)
    if action == "releases":
        return orch.releases()
    if action == "unlock":
        owner = orch.unlock()
        return {"unlocked": owner.describe() if owner else None}
    raise ValueError(action)


def _print_result(action: str, result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif action == "status":
        print(format_status(result))
    elif action == "releases":
        for host, rows in result.items():
            print(f"{host}:")
            for r in rows:
                tag = f"  <- {r['slot']}{' (live)' if r['live'] else ''}" if r["slot"] else ""
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"]))
                print(f"  {r['release']:<40} {when}{tag}")
    elif action == "unlock":
        print(f"lock released (it was held by {result['unlocked']})" if result["unlocked"]
              else "there was no lock")


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
