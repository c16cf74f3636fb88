"""Maintenance mode: every traffic host answers 503 with Retry-After and a message from
the front door, all or none, without touching the slots."""

from __future__ import annotations

from bluegreen.errors import BluegreenError
from bluegreen.routers import Router
from bluegreen.run import Run


def set_maintenance(run: Run, message: str | None, retry_after: int) -> str:
    """Every traffic host answers with the maintenance page (or stops): all or none; the
    slots are never touched."""
    run.ledger.ensure_still_locked()
    state = run.live
    require_maintenance(run)
    done: list[Router] = []
    try:
        for router in run.routers:
            router.set_maintenance(message, retry_after)
            done.append(router)
    except BaseException:
        previous = state.maintenance or None
        for router in done:
            try:
                router.set_maintenance(previous, state.maintenance_retry_after or retry_after)
            except BluegreenError as exc:
                run.report.say(f"    warning: could not put {router.label} back: "
                               f"{exc.what.splitlines()[0]}")
        raise
    state.maintenance = message or ""
    state.maintenance_retry_after = retry_after if message else 0
    run.ledger.save_state(state)
    run.outcome.maintenance = "on" if message else "off"
    hosts = ", ".join(r.label for r in run.routers)
    return (f"503 with Retry-After {retry_after} s on {hosts}" if message
            else f"serving {state.live or 'the live slot'} again on {hosts}")


def require_maintenance(run: Run) -> None:
    lacking = [r for r in run.routers if "maintenance" not in r.features]
    if lacking:
        raise BluegreenError(
            "maintenance mode is not available on " + ", ".join(
                f"{r.label} ({r.kind} mode)" for r in lacking), phase="maintenance",
            host=",".join(r.label for r in lacking), hint="nothing was changed")
