"""Automatic deploys respect a rollback: what the apps' deploy history says was rolled back.

Where the facts come from: the app's own deploy history (history.jsonl on its primary host),
read through the public command `python -m bluegreen status --json --history N --config
<the rule's bluegreen.toml>` right before a job would deploy. So the service never opens a
host itself and depends on no internal module of the core; it needs only what the deploy
it is about to run needs anyway (the config, the SSH key).

What counts, in that history (entries oldest first, as status returns them):
  - an entry with result "ok" and a `rolled_back_release` (today: action "rollback"): the
    commit of that release was rolled back. The commit is the `commit` (BLUEGREEN_COMMIT) of
    the successful deploy that made that release, or its `version` when that is a full SHA
    (automation deploys use the SHA as version);
  - a successful deploy of a quarantined commit after its rollback: a person deployed it by
    hand (`fab deploy`), which allows it again.
The facts are stored in the queue database (rollbacks, allowances), so a person's
`bluegreen release allow` and a history that has since scrolled past N entries both hold.
If the history cannot be read (no bluegreen.toml, a custom deploy command, a host that does
not answer) the job goes on with what the database already knows, and its log says so:
the deploy itself needs the same host and would fail there with a clearer error.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.rules import Rule
from bluegreen.automation.steps import JobCancelled, JobContext, JobFailed

HISTORY_ENTRIES = 200
HISTORY_TIMEOUT = 120.0
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SHA_RELEASE = re.compile(r"^([0-9a-f]{40})-[0-9a-f]{12}$")  # commands.release_id(sha, sum)


@dataclass(frozen=True)
class Fact:
    sha: str
    at: float
    who: str
    release: str = ""


@dataclass(frozen=True)
class HistoryFacts:
    rollbacks: tuple[Fact, ...]  # commits rolled back, oldest first
    deploys: tuple[Fact, ...]  # successful deploys that name their commit, oldest first


def _full_sha(value: Any) -> str:
    text = str(value or "").strip().lower()
    return text if _FULL_SHA.match(text) else ""


def _at(entry: Mapping[str, Any]) -> float:
    value = entry.get("at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


def facts_from_history(entries: Sequence[Any]) -> HistoryFacts:
    """Pure: the rollbacks and deploys a deploy history (oldest first) records."""
    commit_of_release: dict[str, str] = {}
    rollbacks: list[Fact] = []
    deploys: list[Fact] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("result") != "ok":
            continue
        who = str(entry.get("who") or "")
        if entry.get("action") == "deploy":
            commit = _full_sha(entry.get("commit")) or _full_sha(entry.get("version"))
            release = str(entry.get("release") or "")
            if commit:
                if release:
                    commit_of_release[release] = commit
                deploys.append(Fact(commit, _at(entry), who, release))
        rolled = str(entry.get("rolled_back_release") or "")
        if rolled:
            match = _SHA_RELEASE.match(rolled)
            commit = commit_of_release.get(rolled) or (match.group(1) if match else "")
            if commit:
                rollbacks.append(Fact(commit, _at(entry), who, rolled))
    return HistoryFacts(tuple(rollbacks), tuple(deploys))


def read_history(ctx: JobContext, rule: Rule, env: Mapping[str, str], *,
                 python: str = sys.executable) -> list[Any] | None:
    """The app's last HISTORY_ENTRIES history entries; None (and a log line) if unreadable."""
    if not rule.config or not Path(rule.config).is_file():
        ctx.say(f"== rollback check: no bluegreen config at {rule.config or '(none)'}; "
                "using the rollbacks this service already knows")
        return None
    argv = [python, "-m", "bluegreen", "status", "--json", "--history", str(HISTORY_ENTRIES),
            "--config", rule.config]
    try:
        result = ctx.capture("deploy history", argv, env=env, timeout=HISTORY_TIMEOUT)
    except JobCancelled:
        raise
    except JobFailed as exc:
        ctx.say(f"== rollback check: could not read the deploy history ({exc.summary}); "
                "using the rollbacks this service already knows")
        return None
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = None
    history = data.get("history") if isinstance(data, dict) else None
    if not isinstance(history, list):
        why = data.get("error") if isinstance(data, dict) else None
        ctx.say(f"== rollback check: `bluegreen status` gave no history (exit "
                f"{result.returncode}{': ' + str(why)[:200] if why else ''}); using the "
                "rollbacks this service already knows")
        return None
    return history


def sync(ctx: JobContext, queue: JobQueue, rule: Rule, env: Mapping[str, str]) -> None:
    """Record in the queue what the app's history says was rolled back (or deployed by hand
    after its rollback) since the last look."""
    entries = read_history(ctx, rule, env)
    if entries is None:
        return
    facts = facts_from_history(entries)
    for fact in facts.rollbacks:
        if queue.record_rollback(rule.lane, fact.sha, release=fact.release, at=fact.at,
                                 who=fact.who):
            ctx.say(f"== rollback check: {fact.sha[:12]} was rolled back in {rule.lane} by "
                    f"{fact.who or 'someone'}; automatic deploys leave it alone now")
    if not facts.deploys:
        return
    held = {q.sha: q.rolled_back_at for q in queue.quarantined(rule.lane)}
    for fact in facts.deploys:
        if fact.sha in held and fact.at > held[fact.sha]:
            queue.allow(rule.lane, fact.sha, who=fact.who,
                        why="deployed again after its rollback", at=fact.at)
            ctx.say(f"== rollback check: {fact.sha[:12]} was deployed again by "
                    f"{fact.who or 'someone'} after its rollback; allowed again")
