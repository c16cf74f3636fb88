"""Git polling: `git ls-remote` on each watched branch; a new SHA enqueues a deploy job.

The last SHA seen per (remote, branch) lives in the queue's database and is updated in the
same transaction that enqueues the job, so a restart neither redeploys nor misses a push.
The first sighting only records the SHA (unless deploy_on_start): starting the poller must
not redeploy whatever is already live. A remote that is down is logged and retried with
exponential backoff; the poller itself never stops over it.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bluegreen.automation.events import Ignored, PushEvent
from bluegreen.automation.intake import requests_for
from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.settings import PollTarget, Settings

log = logging.getLogger("bluegreen.automation.poller")

FIRST = "first"
UNCHANGED = "unchanged"
CHANGED = "changed"
MISSING = "missing"  # the branch does not exist on the remote
ERROR = "error"


@dataclass(frozen=True)
class PollResult:
    status: str
    sha: str = ""
    job_ids: tuple[int, ...] = ()
    detail: str = ""


class RemoteError(Exception):
    pass


def parse_ls_remote(output: str, branch: str) -> str | None:
    """The SHA of exactly refs/heads/<branch>. ls-remote's pattern also matches refs that
    merely end in it (refs/heads/x/refs/heads/main), so compare the whole name."""
    wanted = f"refs/heads/{branch}"
    for line in output.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == wanted and sha:
            return sha.strip().lower()
    return None


def next_delay(target: PollTarget, failures: int,
               rand: Callable[[], float] = random.random) -> float:
    """interval * 2^failures, capped at max_backoff, then +-jitter."""
    cap = max(target.max_backoff, target.interval)
    base = min(target.interval * (2 ** min(failures, 30)), cap)
    spread = target.jitter * (2 * rand() - 1)
    return max(0.05, base * (1 + spread))


def ls_remote(target: PollTarget, env: Mapping[str, str]) -> str | None:
    """The branch's SHA, None if the branch does not exist; RemoteError if unreachable."""
    argv = ["git", "ls-remote", "--exit-code", "--", target.remote, f"refs/heads/{target.branch}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=target.timeout,
                              env=dict(env), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"git ls-remote timed out after {target.timeout:.0f}s") from None
    if done.returncode == 2:
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RemoteError(f"git ls-remote exit {done.returncode}: {last[:300]}")
    return parse_ls_remote(done.stdout, target.branch)


class Poller:
    def __init__(self, settings: Settings, queue: JobQueue, *, env: Mapping[str, str],
                 on_enqueued: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.queue = queue
        self.env = {**env, "GIT_TERMINAL_PROMPT": "0"}
        self.on_enqueued = on_enqueued
        self.failures: dict[str, int] = {}

    def poll_once(self, target: PollTarget) -> PollResult:
        try:
            sha = ls_remote(target, self.env)
        except (RemoteError, OSError) as exc:
            count = self.failures.get(target.key, 0) + 1
            self.failures[target.key] = count
            log.warning("poll %s %s: remote unavailable (%s); failure %d, backing off",
                        target.remote, target.branch, exc, count)
            return PollResult(ERROR, detail=str(exc))
        self.failures.pop(target.key, None)
        if sha is None:
            log.warning("poll %s: branch %r does not exist", target.remote, target.branch)
            return PollResult(MISSING)
        seen = self.queue.last_seen(target.remote, target.branch)
        if seen == sha:
            return PollResult(UNCHANGED, sha)
        if seen is None and not target.deploy_on_start:
            self.queue.record_seen(target.remote, target.branch, sha)
            log.info("poll %s %s: first sight of %s, recorded (deploy_on_start is off)",
                     target.remote, target.branch, sha[:12])
            return PollResult(FIRST, sha)
        event = PushEvent(provider="poll", repo=target.repo, branch=target.branch, sha=sha,
                          pusher=target.remote, clone_url=target.remote)
        try:
            requests = requests_for(self.settings.rules, event, delivery_id=None)
        except Ignored as ignored:  # no rule wants it (any more): remember it, deploy nothing
            self.queue.record_seen(target.remote, target.branch, sha)
            log.warning("poll %s %s: %s", target.remote, target.branch, ignored.reason)
            return PollResult(UNCHANGED, sha, detail=ignored.reason)
        submitted = self.queue.submit("poll", None, requests,
                                      poll_mark=(target.remote, target.branch, sha))
        log.info("poll %s %s: %s -> %s, jobs %s", target.remote, target.branch,
                 (seen or "none")[:12], sha[:12], submitted.job_ids)
        if self.on_enqueued is not None:
            for req in requests:
                self.on_enqueued(req.lane)
        return PollResult(CHANGED, sha, tuple(submitted.job_ids))

    def run(self, stop: threading.Event, targets: tuple[PollTarget, ...] | None = None) -> None:
        """Poll every target on its own schedule until `stop` is set."""
        targets = self.settings.polls if targets is None else targets
        due = {t.key: 0.0 for t in targets}
        while not stop.is_set():
            now = time.monotonic()
            for target in targets:
                if stop.is_set() or due[target.key] > now:
                    continue
                try:
                    self.poll_once(target)
                except Exception:  # a bug or a db hiccup: log, back off, keep polling
                    log.exception("poll %s %s failed", target.remote, target.branch)
                    self.failures[target.key] = self.failures.get(target.key, 0) + 1
                delay = next_delay(target, self.failures.get(target.key, 0))
                due[target.key] = time.monotonic() + delay
            if not due:
                stop.wait(1.0)
                continue
            stop.wait(max(0.01, min(due.values()) - time.monotonic()))
