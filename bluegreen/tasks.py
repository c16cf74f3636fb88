"""The Fabric face: `fab deploy | switch | rollback | status | releases | unlock`.

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
    force="deploy an artifact the watch window once reverted"))
def deploy(c: Context, artifact: str = "", version: str = "", config: str = "",
           set_: list[str] | None = None, dry_run: bool = False, verbose: bool = False,
           who: str = "", lock_wait: float = 0.0, force: bool = False, parallel: int = 0,
           json: bool = False, batch: str = "", max_fail: int = -1, pause: float = -1.0,
           keep_partial: bool = False) -> None:
    """Ship a build to the idle slot, health-check it, and switch traffic to it."""
    _finish(execute("deploy", config=config, overrides=set_, dry_run=dry_run, verbose=verbose,
                    who=who, lock_wait=lock_wait, force=force, parallel=parallel,
                    as_json=json, artifact=artifact, version=version, batch=batch,
                    max_fail=None if max_fail == -1 else max_fail,
                    pause=None if pause == -1.0 else pause, keep_partial=keep_partial))


@task(iterable=["set_"], help=_help("config", "set_", "dry_run", "verbose", "who", "lock_wait",
                                    "parallel", "json",
                                    to="blue or green (default: the idle slot)"))
def switch(c: Context, to: str = "", config: str = "", set_: list[str] | None = None,
           dry_run: bool = False, verbose: bool = False, who: str = "",
           lock_wait: float = 0.0, parallel: int = 0, json: bool = False) -> None:
    """Flip traffic to the other slot (health-checked first)."""
    _finish(execute("switch", config=config, overrides=set_, dry_run=dry_run, verbose=verbose,
                    who=who, to=to, lock_wait=lock_wait, parallel=parallel, as_json=json))


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


ns = Collection(deploy, switch, rollback, status, releases, history, unlock)
