"""One way to run an action, shared by `fab` tasks and the `bluegreen` command.

Loads the config, runs the flow, prints a failure the way a person needs it (what, where,
what next) and turns it into an exit code. Only expected failures (BluegreenError) are
caught; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from bluegreen import config as config_mod
from bluegreen import interrupts
from bluegreen.errors import ArgumentError, BluegreenError


def _quiet_refused_channels(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Secsh channel") or "open FAILED" not in str(
        record.getMessage())


def execute(action: str, *, config: str = "", overrides: list[str] | None = None,
            dry_run: bool = False, verbose: bool = False, who: str = "",
            lock_wait: float = 0.0,
            as_json: bool = False, artifact: str = "", version: str = "", to: str = "",
            history: int = 10, since: str = "", only_action: str = "",
            force: bool = False, parallel: int = 0, batch: str = "",
            max_fail: int | None = None, pause: float | None = None,
            keep_partial: bool = False) -> int:
    # Jenkins' abort and the webhook worker stop a deploy with SIGTERM: like Ctrl-C, it
    # waits for the remote steps in flight, then undoes a half-done switch and unlocks
    interrupts.install()
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    # paramiko logs every refused direct-tcpip channel (a health probe of an app still
    # booting) at ERROR: the health phase reports what matters, and nothing else is hidden
    logging.getLogger("paramiko.transport").addFilter(_quiet_refused_channels)
    try:
        config_mod.check_label("--version", version)
        config_mod.check_label("--who", who)
        cfg = fleet_flags(config_mod.load(config or None, overrides=overrides or []),
                          parallel=parallel, batch=batch, max_fail=max_fail, pause=pause,
                          keep_partial=keep_partial)
        result, plan = _dispatch(cfg, action, dry_run=dry_run, who=who, quiet=as_json,
                                 lock_wait=lock_wait, since=since, only_action=only_action,
                                 force=force,
                                 artifact=artifact, version=version, to=to, history=history)
        if plan is not None:
            print("\nDRY RUN: nothing was changed. These changes would be made:")
            for line in plan.lines(verbose=verbose):
                print(f"  {line}")
        _print_result(action, result, as_json)
        return int(result.get("exit_code", 0)) if action == "status" else 0
    except BluegreenError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        if as_json:
            failed: dict[str, Any] = {"ok": False, "error": exc.what, "phase": exc.phase,
                                      "host": exc.host, "hint": exc.hint}
            if getattr(exc, "hosts", None):
                failed["hosts"] = exc.hosts  # type: ignore[attr-defined]
            print(json.dumps(failed, default=str))
        return exc.exit_code
    except KeyboardInterrupt as stop:
        said = (getattr(stop, "summary", "")
                or "traffic stays where the last completed phase left it")
        print(f"\nINTERRUPTED: {said}. The lock was released. Re-run the same command: "
              "every phase converges.", file=sys.stderr)
        return 130


def _dispatch(cfg: config_mod.Config, action: str, *, dry_run: bool, who: str, quiet: bool,
              lock_wait: float, artifact: str, version: str, to: str,
              history: int, since: str = "", only_action: str = "",
              force: bool = False) -> tuple[Any, Any]:
    # imported here: `bluegreen --help` and the automation service need none of the flow
    from bluegreen import deploy, lock, views
    from bluegreen.fleet import Fleet
    from bluegreen.ledger import Ledger, Who
    from bluegreen.plan import Plan
    from bluegreen.report import Reporter
    from bluegreen.run import Outcome, Run

    plan = Plan() if dry_run else None
    report = Reporter(quiet=quiet)
    fleet = Fleet(cfg, plan=plan, parallel=cfg.fleet.parallel, report=report,
                  progress_every=cfg.fleet.progress_every)
    ledger = Ledger(cfg, fleet, Who.from_env(who), report, lock_wait=lock_wait)
    try:
        if action in deploy.FLOWS:
            run = Run(cfg, fleet, ledger, report, Outcome(action))
            try:
                if action == "deploy":
                    path = _artifact_path(cfg, artifact)
                    run.force = force
                    outcome = (deploy.deploy_in_batches(run, path, version) if cfg.fleet.batch
                               else deploy.deploy(run, path, version, force=force))
                elif action == "switch":
                    outcome = deploy.switch(run, to)
                else:
                    outcome = deploy.rollback(run)
            except BluegreenError as exc:
                exc.hosts = _host_summary(fleet, report)  # type: ignore[attr-defined]
                raise
            return {**outcome.entry(), "hosts": _host_summary(fleet, report)}, plan
        if action == "status":
            deploy.recover_if_pending(Run(cfg, fleet, ledger, report, Outcome("recover")))
            return views.status(cfg, fleet, history), plan
        if action == "releases":
            return views.releases(cfg, fleet), plan
        if action == "history":
            try:
                after = views.parse_since(since)
            except ValueError as exc:
                raise ArgumentError(
                    "--since", f"expected 30m, 12h, 7d or an ISO date, got {since!r}") from exc
            return views.history(cfg, fleet, since=after, action=only_action,
                                 limit=history), plan
        if action == "unlock":
            primary = fleet.primary
            owner = lock.break_lock(primary, fleet.layout(primary))
            ledger.record({"action": "unlock", "result": "ok",
                           "broken_lock": owner.__dict__ if owner else None})
            return {"unlocked": owner.describe() if owner else None}, plan
        raise ValueError(action)
    finally:
        fleet.close()


def fleet_flags(cfg: config_mod.Config, *, parallel: int = 0, batch: str = "",
                max_fail: int | None = None, pause: float | None = None,
                keep_partial: bool = False) -> config_mod.Config:
    """--parallel, --batch, --max-fail, --pause, --keep-partial over the [fleet] keys."""
    import dataclasses

    f = cfg.fleet
    if parallel:
        if not 1 <= parallel <= 1024:
            raise ArgumentError("--parallel", f"expected 1 to 1024 hosts at once, got {parallel}")
        f = dataclasses.replace(f, parallel=parallel)
    if batch:
        try:
            f = dataclasses.replace(f, batch=config_mod._check_batch(batch))
        except ValueError as exc:
            raise ArgumentError("--batch", str(exc), hint="e.g. --batch 25% or --batch 2") \
                from None
    if max_fail is not None:
        if max_fail < 0:
            raise ArgumentError("--max-fail", f"expected 0 or more hosts, got {max_fail}")
        f = dataclasses.replace(f, max_fail=max_fail)
    if pause is not None:
        if not 0 <= pause <= config_mod.MAX_SECONDS:
            raise ArgumentError("--pause", f"expected 0 or more seconds, got {pause:g}")
        f = dataclasses.replace(f, pause=pause)
    if keep_partial:
        f = dataclasses.replace(f, keep_partial=True)
    return cfg if f == cfg.fleet else dataclasses.replace(cfg, fleet=f)


def _host_summary(fleet: Any, report: Any) -> list[dict[str, Any]]:
    """The per-host rows of the run; printed as a table when the run touched 2+ hosts."""
    from bluegreen.fleet import format_table

    rows: list[dict[str, Any]] = fleet.rows()
    if len(rows) > 1:
        report.say("\nper host:\n" + format_table(rows))
    return rows


def _artifact_path(cfg: config_mod.Config, artifact: str) -> Path:
    path = artifact or cfg.artifact
    if not path:
        raise BluegreenError("no artifact given", phase="upload", host="local",
                             hint="pass --artifact PATH or set artifact in bluegreen.toml")
    return cfg.resolve(path) if not Path(path).is_absolute() and not Path(path).exists() \
        else Path(path)


def _print_result(action: str, result: Any, as_json: bool) -> None:
    from bluegreen import views

    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif action == "status":
        print(views.format_status(result))
    elif action == "releases":
        print(views.format_releases(result))
    elif action == "history":
        print(views.format_history(result))
    elif action == "unlock":
        print(f"lock released (it was held by {result['unlocked']})" if result["unlocked"]
              else "there was no lock")
