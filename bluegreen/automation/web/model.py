"""The page's data model: what a snapshot and the job queue say, as plain dicts.

The same dicts render the HTML and are the JSON of /ui/api/state, so what a script reads
is what a person sees. Built field by field from the snapshot (never the raw records), so
nothing the page does not mean to show (the lock's release token, an app's [env] values,
webhook secrets) can reach it; scrub() then removes any secret value that made its way
into free text (an error message, a job's log).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from bluegreen.automation.jobqueue import FINISHED, PENDING, RUNNING, Job
from bluegreen.automation.steps import tail_lines
from bluegreen.automation.web.catalog import AppEntry
from bluegreen.automation.web.reader import (
    Snapshot,
    auto_reverted,
    failed_requests,
    measured_requests,
)

OPERATIONS = ("deploy", "switch", "rollback")  # what the chart and duration metrics show
REDACTED = "[redacted]"
_SAFE_URL = re.compile(r"^https?://[^\s\"'<>\\]+$")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
VERDICTS = {0: ("ok", "consistent, and the live slot is healthy everywhere"),
            4: ("unhealthy", "the live slot is down or unhealthy somewhere, or a host is "
                             "unreachable"),
            5: ("inconsistent", "a router disagrees with recorded state, or a switch is "
                                "pending")}


def scrub(value: Any, secrets: Sequence[str]) -> Any:
    """`value` with every occurrence of a secret replaced, in every string it holds."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def safe_url(url: Any) -> str:
    """A link the page may render: http(s) only, so a history entry or job whose build URL
    says `javascript:...` is shown as nothing rather than as a script."""
    if isinstance(url, str) and len(url) <= 1000 and _SAFE_URL.match(url):
        return url
    return ""


def _first_line(text: Any, limit: int = 300) -> str:
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


@cache
def phase_order(action: str) -> dict[str, int]:
    """Phase names in the order `action` runs them (history stores `phases` with sorted
    keys), read off the flows themselves so that a new phase needs no change here."""
    from bluegreen import deploy

    flows = {"deploy": lambda: deploy.deploy_phases(Path("-"), ""),
             "switch": lambda: deploy.switch_phases(""), "rollback": lambda: deploy.ROLLBACK}
    names = [phase.name for phase in flows[action]()] if action in flows else []
    names.append("on-failure")  # the failure hook's own phase line, after whatever failed
    return {name: i for i, name in enumerate(dict.fromkeys(names))}


# ---------------------------------------------------------------- history


def history_row(entry: dict[str, Any], commit_base: str = "") -> dict[str, Any]:
    order = phase_order(str(entry.get("action") or ""))
    raw_phases = entry.get("phases") if isinstance(entry.get("phases"), dict) else {}
    phases = sorted(((str(k), float(v)) for k, v in raw_phases.items()
                     if _number(v) is not None and v >= 0),
                    key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    total = sum(s for _, s in phases) or 1.0
    commit = str(entry.get("commit") or "")
    commit_url = (f"{commit_base}/commit/{commit}" if commit_base and _SHA.match(commit)
                  else "")
    result = str(entry.get("result") or "?")
    failed = failed_requests(entry)
    return {
        "at": _number(entry.get("at")),
        "who": str(entry.get("who") or ""),
        "action": str(entry.get("action") or "?"),
        "label": str(entry.get("version") or entry.get("release") or ""),
        "release": str(entry.get("release") or ""),
        "from_slot": str(entry.get("from_slot") or ""),
        "to_slot": str(entry.get("to_slot") or ""),
        "result": result,
        "ok": result == "ok",
        "seconds": _number(entry.get("seconds")),
        "phases": [{"name": name, "seconds": round(s, 3), "share": round(s / total, 4)}
                   for name, s in phases],
        "failed_phase": str(entry.get("phase") or "") if result != "ok" else "",
        "error": _first_line(entry.get("error")) if result != "ok" else "",
        "failed_host": str(entry.get("failed_host") or ""),
        "failed_requests": failed,
        "requests": measured_requests(entry),
        "auto_reverted": auto_reverted(entry),
        "automatic": bool(entry.get("automatic")),
        "reason": _first_line(entry.get("reason")),
        "build_url": safe_url(entry.get("build_url")),
        "commit": commit,
        "commit_url": commit_url,
    }


def chart_points(history: Iterable[dict[str, Any]], limit: int = 40) -> list[dict[str, Any]]:
    """The operations the chart plots, oldest first: deploys, switches, rollbacks with a
    duration."""
    points = []
    for entry in history:
        seconds = _number(entry.get("seconds"))
        if entry.get("action") in OPERATIONS and seconds is not None:
            points.append({"at": _number(entry.get("at")), "action": entry["action"],
                           "result": str(entry.get("result") or "?"),
                           "label": str(entry.get("version") or entry.get("release") or ""),
                           "seconds": seconds, "failed_requests": failed_requests(entry)})
    return points[-limit:]


# ---------------------------------------------------------------- slots, hosts, lock


def slot_role(slot: str, live: str | None, record: dict[str, Any],
              seen: dict[str, Any] | None) -> str:
    """live | ready | idle | failed | empty: what a slot is to someone about to switch."""
    if record.get("status") == "failed":
        return "failed"
    if slot == live:
        return "live"
    if seen is not None and seen.get("running"):
        return "ready" if seen.get("healthy") else "failed"
    if record.get("status") == "ready":
        return "ready"
    return "idle" if record.get("release") else "empty"


def _weight(status: dict[str, Any], slot: str, record: dict[str, Any]) -> float | None:
    """A canary's share of traffic, when state records one (bluegreen does not yet)."""
    weights = status.get("weights")
    if isinstance(weights, dict) and _number(weights.get(slot)) is not None:
        return float(weights[slot])
    return _number(record.get("weight"))


def grid(status: dict[str, Any]) -> list[dict[str, Any]]:
    live = status.get("live")
    slots: dict[str, Any] = status.get("slots") or {}
    rows = []
    for host, seen in (status.get("app_hosts") or {}).items():
        unknown = str(seen.get("unknown", "")) if isinstance(seen, dict) else "no answer"
        cells = []
        for slot in ("blue", "green"):
            record = slots.get(slot) or {}
            here = None if unknown else seen.get(slot)
            cells.append({
                "slot": slot,
                "role": slot_role(slot, live, record, here),
                "running": None if here is None else bool(here.get("running")),
                "healthy": None if here is None else bool(here.get("healthy")),
                "probe": "" if here is None else _first_line(here.get("probe"), 160),
                "version": str(record.get("version") or ""),
                "release": str(record.get("release") or ""),
                "recorded": str(record.get("status") or ""),
                "deployed_at": _number(record.get("deployed_at")) or None,
                "port": record.get("port"),
                "weight": _weight(status, slot, record),
            })
        rows.append({"host": str(host), "unknown": unknown, "cells": cells})
    return rows


def traffic(status: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for host, seen in (status.get("traffic_hosts") or {}).items():
        if not isinstance(seen, dict) or "unknown" in seen:
            rows.append({"host": str(host), "unknown": str((seen or {}).get("unknown", "")),
                         "routes_to": None, "file_says": None, "release": None, "seen": ""})
            continue
        rows.append({"host": str(host), "unknown": "", "routes_to": seen.get("routes_to"),
                     "file_says": seen.get("file_says"), "release": seen.get("release"),
                     "seen": _first_line(seen.get("seen"), 200)})
    return rows


def lock_view(status: dict[str, Any], extra: dict[str, Any], now: float) -> dict[str, Any] | None:
    owner = status.get("lock")
    if not isinstance(owner, dict):
        return None
    merged = {**extra, **{k: v for k, v in owner.items() if v not in (None, "")}}
    started = _number(merged.get("started_at"))
    beat = _number(merged.get("heartbeat"))
    phase_at = _number(merged.get("phase_started_at"))
    return {
        "who": str(merged.get("who") or "?"),
        "action": str(merged.get("action") or "?"),
        "since": started,
        "age": round(now - started, 1) if started else None,
        "machine": str(merged.get("machine") or ""),
        "pid": merged.get("pid") if isinstance(merged.get("pid"), int) else None,
        "build_url": safe_url(merged.get("build_url")),
        "heartbeat_age": round(now - beat, 1) if beat else None,
        # the phase the holder is in: only when the run writes it into its owner record
        "phase": str(merged.get("phase") or ""),
        "phase_age": round(now - phase_at, 1) if phase_at else None,
    }


# ---------------------------------------------------------------- jobs


def job_view(job: Job, *, log_lines: int, now: float) -> dict[str, Any]:
    if job.state == RUNNING and job.log_path:
        tail = tail_lines(Path(job.log_path), log_lines)  # still being written: read it
    else:
        tail = "\n".join(job.log_tail.splitlines()[-log_lines:])
    end = job.finished_at or (now if job.state == RUNNING else None)
    return {
        "id": job.id, "state": job.state, "lane": job.lane, "app": job.app,
        "environment": job.environment, "rule": job.rule, "action": job.action,
        "provider": job.provider, "who": job.who, "repo": job.repo, "branch": job.branch,
        "sha": job.sha, "build_url": safe_url(job.build_url),
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at,
        "seconds": round(end - job.started_at, 1) if end and job.started_at else None,
        "summary": _first_line(job.summary, 400), "exit_code": job.exit_code,
        "superseded_by": job.superseded_by, "log_tail": tail,
    }


def jobs_view(jobs: Sequence[Job], counts: dict[str, int], *, log_lines: int,
              now: float, finished_limit: int = 15) -> dict[str, Any]:
    return {
        "counts": dict(counts),
        "running": [job_view(j, log_lines=log_lines, now=now) for j in jobs
                    if j.state == RUNNING],
        "queued": [job_view(j, log_lines=log_lines, now=now) for j in jobs
                   if j.state == PENDING],
        "finished": [job_view(j, log_lines=log_lines, now=now) for j in jobs
                     if j.state in FINISHED][:finished_limit],
    }


# ---------------------------------------------------------------- one app


def app_view(entry: AppEntry, snap: Snapshot | None, jobs: dict[str, Any], *, now: float,
             history_rows: int = 50) -> dict[str, Any]:
    """Everything the page shows about one app. `jobs` is jobs_view() of this app's lanes."""
    view: dict[str, Any] = {
        "slug": entry.slug, "app": entry.name, "config": entry.config_path,
        "lanes": list(entry.lanes), "read": snap is not None,
        "error": snap.error if snap else "", "read_at": snap.read_at if snap else None,
        "status_at": snap.status_at if snap and snap.status else None,
        "live": None, "previous": None, "verdict": None, "grid": [], "traffic": [],
        "lock": None, "pending_switch": None, "history": [], "chart": [], "totals": None,
        "jobs": jobs,
    }
    if snap is None:
        return view
    history = snap.history
    view["history"] = [history_row(e, entry.commit_base)
                       for e in reversed(history[-history_rows:])]
    view["chart"] = chart_points(history)
    view["totals"] = {"operations": sum(snap.totals.operations.values()),
                      "failed_requests": snap.totals.failed_requests,
                      "measured": snap.totals.measured,
                      "auto_reverts": snap.totals.auto_reverts}
    status = snap.status
    if status is not None:
        code = status.get("exit_code")
        word, meaning = VERDICTS.get(code if isinstance(code, int) else -1,
                                     ("unknown", "no verdict"))
        view.update({
            "app": str(status.get("app") or entry.name),
            "live": status.get("live"), "previous": status.get("previous"),
            "verdict": {"exit_code": code, "word": word, "meaning": meaning},
            "grid": grid(status), "traffic": traffic(status),
            "lock": lock_view(status, snap.owner_extra, now),
            "pending_switch": status.get("pending_switch"),
        })
    return scrub(view, snap.secrets)
