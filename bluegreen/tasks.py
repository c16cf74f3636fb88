"""The Fabric face: `fab deploy | switch | promote | rollback | maintenance | status |
releases | history | unlock`.

A project's fabfile.py is one line: `from bluegreen.tasks import ns`. Hosts come from
bluegreen.toml, not from `fab -H`: a deploy opens its own connections to every app and
traffic host so that it can act on all of them at once and all-or-nothing.
"""

from __future__ import annotations

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from bluegreen.runner import execute

COMMON_HELP = {
    "config": "bluegreen.toml to use (default: ./bluegreen.toml or $BLUEGREEN_CONFIG)",
    "set_": "override a config value, e.g. --set health.timeout=90 (repeatable)",
    "dry_run": "print the plan, one line per change; change nothing",
    "verbose": "with --dry-run: the exact commands under each step",
    "lock_wait": "seconds to wait for a lock another live run holds (default: fail at once)",
    "who": "name recorded in the lock and history (default: Jenkins job or user@host)",
    "parallel": "hosts acted on at once, each over one SSH connection (default: "
                "fleet.parallel, 32)",
    "json": "machine-readable output: the outcome and a row per host",
    "batch": "rolling deploy, when every app host is its own traffic host: 25% or 2 hosts "
             "at a time (default: fleet.batch; empty: all at once)",
    "max_fail": "hosts that may fail before a rolling deploy stops (default 0)",
    "pause": "seconds to wait between batches",
    "keep_partial": "a stopped rolling deploy leaves the hosts it switched on the new "
                    "release (default: switch them back)",
}


def _help(*names: str, **extra: str) -> dict[str, str]:
    return {**{n: COMMON_HELP[n] for n in names}, **extra}


def _finish(rc: int) -> None:
    if rc:
        raise Exit(code=rc)


@task(iterable=["set_"], help=_help(
    "config", "set_", "dry_run", "verbose", "who", "lock_wait", "parallel", "json", "batch",
    "max_fail", "pause", "keep_partial",
    artifact="the build to ship: a jar, a binary, or a tarball with a runner",
    version="version label for this release (default: $GIT_COMMIT)",
    force="deploy an artifact the watch window once reverted",
    no_switch="stop at a healthy idle slot, marked ready (and reachable by preview); "
              "`fab promote` switches to it later",
    canary="walk the new slot's share of users up, e.g. 5,25,100 (lua mode); each step is "
           "gated by the watch",
    step="seconds each canary step is watched (default: canary.step, 60)"))
def deploy(c: Context, artifact: str = "", version: str = "", config: str = "",
           set_: list[str] | None = None, dry_run: bool = False, verbose: bool = False,
           who: str = "", lock_wait: float = 0.0, force: bool = False,
           no_switch: bool = False, canary: str = "", step: float = 0.0, parallel: int = 0,
           json: bool = False, batch: str = "", max_fail: int = -1, pause: float = -1.0,
           keep_partial: bool = False) -> None:
    """Ship a build to the idle slot, health-check it, and switch traffic to it."""
    _finish(execute("deploy", config=config, overrides=set_, dry_run=dry_run, verbose=verbose,
                    who=who, lock_wait=lock_wait, force=force, parallel=parallel,
                    as_json=json, artifact=artifact, version=version, no_switch=no_switch,
                    canary=canary, step=step or None, batch=batch,
                    max_fail=None if max_fail == -1 else max_fail,
                    pause=None if pause == -1.0 else pause, keep_partial=keep_partial))


@task(iterable=["set_"], help=_help(
    "config", "set_", "dry_run", "verbose", "who", "lock_wait", "parallel", "json",
    to="blue or green (default: the idle slot)",
    weight="a canary: this percent of users (1-99, by cohort cookie) to the idle slot; "
           "100 switches whole (lua mode)",
    abort="end a canary: everyone back on the live slot (0%)"))
def switch(c: Context, to: str = "", config: str = "", set_: list[str] | None = None,
           dry_run: bool = False, verbose: bool = False, who: str = "",
           lock_wait: float = 0.0, weight: int = -1, abort: bool = False, parallel: int = 0,
           json: bool = False) -> None:
    """Flip traffic to the other slot (health-checked first), or give it a share."""
    _finish(execute("switch", config=config, overrides=set_, dry_run=dry_run, verbose=verbose,
                    who=who, to=to, lock_wait=lock_wait, parallel=parallel, as_json=json,
                    weight=None if weight == -1 else weight, abort=abort))


@task(iterable=["set_"], help=_help("config", "set_", "dry_run", "verbose", "who", "lock_wait"))
def promote(c: Context, config: str = "", set_: list[str] | None = None,
            dry_run: bool = False, verbose: bool = False, who: str = "",
            lock_wait: float = 0.0) -> None:
    """Switch to the slot `deploy --no-switch` left ready (or finish a canary)."""
    _finish(execute("promote", config=config, overrides=set_, dry_run=dry_run,
                    verbose=verbose, who=who, lock_wait=lock_wait))


@task(positional=["state"], iterable=["set_"], help=_help(
    "config", "set_", "dry_run", "verbose", "who", "lock_wait",
    state="on or off",
    message="what users read (one line; default: the message already on, else Down for "
            "maintenance; back soon.)",
    retry_after="seconds clients are told to wait (Retry-After, default 60)"))
def maintenance(c: Context, state: str | None = None, message: str = "", retry_after: int = 60,
                config: str = "", set_: list[str] | None = None, dry_run: bool = False,
                verbose: bool = False, who: str = "", lock_wait: float = 0.0) -> None:
    """Answer 503 + Retry-After with a message at the front door (on), or stop (off)."""
    _finish(execute("maintenance", config=config, overrides=set_, dry_run=dry_run,
                    verbose=verbose, who=who, lock_wait=lock_wait, state=state or "",
                    message=message, retry_after=retry_after))


@task(iterable=["set_"], help=_help("config", "set_", "dry_run", "verbose", "who", "lock_wait",
                                    "parallel", "json"))
def rollback(c: Context, config: str = "", set_: list[str] | None = None,
             dry_run: bool = False, verbose: bool = False, who: str = "",
             lock_wait: float = 0.0, parallel: int = 0, json: bool = False) -> None:
    """Go back to the previous release: instant while its slot is warm."""
    _finish(execute("rollback", config=config, overrides=set_, dry_run=dry_run,
                    verbose=verbose, who=who, lock_wait=lock_wait, parallel=parallel,
                    as_json=json))


@task(iterable=["set_"], help=_help("config", "set_", json="machine-readable output",
                                    history="how many history entries to show"))
def status(c: Context, config: str = "", set_: list[str] | None = None, json: bool = False,
           history: int = 10) -> None:
    """Which slot is live, what runs where, is it healthy, recent history."""
    _finish(execute("status", config=config, overrides=set_, as_json=json, history=history))


@task(iterable=["set_"], help=_help("config", "set_", json="machine-readable output"))
def releases(c: Context, config: str = "", set_: list[str] | None = None,
             json: bool = False) -> None:
    """List the releases kept on each app host."""
    _finish(execute("releases", config=config, overrides=set_, as_json=json))


@task(iterable=["set_"], help=_help("config", "set_", "who"))
def unlock(c: Context, config: str = "", set_: list[str] | None = None, who: str = "") -> None:
    """Break a stale deploy lock (say whose it was, and record it in history)."""
    _finish(execute("unlock", config=config, overrides=set_, who=who))


@task(iterable=["set_"], help=_help(
    "config", "set_", json="machine-readable output", limit="how many entries (default 20)",
    since="only entries newer than this: 30m, 12h, 7d or an ISO date",
    action="only this action: deploy, switch, rollback, recover, unlock"))
def history(c: Context, config: str = "", set_: list[str] | None = None, json: bool = False,
            limit: int = 20, since: str = "", action: str = "") -> None:
    """Deploys, switches and rollbacks: who, what, when, how long, the result."""
    _finish(execute("history", config=config, overrides=set_, as_json=json, history=limit,
                    since=since, only_action=action))


ns = Collection(deploy, switch, promote, rollback, maintenance, status, releases, history,
                unlock)
