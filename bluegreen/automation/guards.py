"""Before an automatic job deploys: is this still what the branch wants, and not a rollback?

A signed webhook body stays valid forever, and its delivery id is whatever the sender says,
so anyone who captured one can replay it. What a replay cannot fake is the state of the
remote and of this lane. Before a push job builds (or triggers Jenkins):

  1. tip      `git ls-remote` (with a timeout) on the rule's clone_url: the commit must still
              be the tip of its branch. Moved on -> skipped (the newer push deploys);
              branch gone -> skipped; remote unreachable -> the job fails, nothing deploys.
  2. repeat   a commit this lane already deployed is not deployed again -> skipped.
  3. rollback the app's deploy history is read (quarantine.py); a rolled-back commit is not
              deployed again until a person allows it -> skipped.
  4. ancestry after the fetch, in the job's clone: a commit that is an ancestor of what the
              lane deployed last, or of a rolled-back commit (`git merge-base
              --is-ancestor`) -> skipped; deploying it would roll production back.
A person can always ask explicitly: `bluegreen jobs --retry ID` makes an `explicit` job,
which these checks let through (as does a hand-run `fab deploy`, which never comes here).
The checks are per lane (app/environment): what matters is what that app received.
Jenkins notifications (deploy_artifact) are checked for 3 only: the commit is Jenkins'.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from bluegreen.automation import build, quarantine
from bluegreen.automation.jobqueue import Job, JobQueue
from bluegreen.automation.poller import parse_ls_remote
from bluegreen.automation.rules import Rule
from bluegreen.automation.settings import Settings
from bluegreen.automation.steps import JobContext, JobFailed, JobSkipped


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "?"


class Guard:
    def __init__(self, ctx: JobContext, job: Job, rule: Rule, settings: Settings,
                 queue: JobQueue, env: Mapping[str, str]) -> None:
        self.ctx = ctx
        self.job = job
        self.rule = rule
        self.settings = settings
        self.queue = queue
        self.env = env
        self.sha = job.sha.lower()
        self.lane = rule.lane
        if job.explicit:
            ctx.say("== guards: a person asked for this job (`bluegreen jobs --retry`); the "
                    "replay and rollback checks do not apply")

    @property
    def active(self) -> bool:
        return not self.job.explicit and bool(self.sha)

    def retry_hint(self, how: str = "anyway") -> str:
        return f"`bluegreen jobs --retry {self.job.id}` deploys it {how}"

    # ---- before the fetch ---------------------------------------------------------------

    def before_fetch(self) -> None:
        """Tip, repeat and rollback checks (no clone needed)."""
        if not self.active:
            return
        self.check_tip()
        self.check_repeat()
        self.check_rolled_back()

    def check_tip(self) -> None:
        branch = self.job.branch
        if not self.rule.clone_url:
            self.ctx.say("== guards: the rule has no clone_url, so the branch tip and the "
                         "commit's ancestry cannot be checked; set clone_url to have them")
            return
        timeout = self.settings.git_ls_remote_timeout
        argv = ["git", "ls-remote", "--exit-code", "--", self.rule.clone_url,
                f"refs/heads/{branch}"]
        asked = f"could not ask the remote whether {self.sha[:12]} is still the tip of " \
                f"branch {branch!r}"
        try:
            result = self.ctx.capture("git ls-remote", argv, env=self.env, timeout=timeout)
        except JobFailed:
            raise JobFailed(f"{asked}: git ls-remote timed out after {timeout:g}s; not "
                            "deployed") from None
        tip = parse_ls_remote(result.stdout, branch) if result.returncode == 0 else None
        if result.returncode not in (0, 2):
            raise JobFailed(f"{asked}: git ls-remote exit {result.returncode} (see the job "
                            "log); not deployed")
        if tip is None:
            raise JobSkipped(f"branch {branch!r} no longer exists at the remote; "
                             f"{self.retry_hint()}")
        if tip != self.sha:
            raise JobSkipped(f"commit {self.sha[:12]} is no longer the tip of branch "
                             f"{branch!r} at the remote (the tip is {tip[:12]}): a late or "
                             f"replayed webhook never deploys an older commit; "
                             f"{self.retry_hint()}")
        self.ctx.say(f"== guards: {self.sha[:12]} is the tip of {branch!r} at the remote")

    def check_repeat(self) -> None:
        for done in self.queue.deployed(self.lane, exclude=self.job.id):
            if done.sha == self.sha:
                raise JobSkipped(f"commit {self.sha[:12]} is already deployed in {self.lane} "
                                 f"(job {done.job_id}, {_when(done.finished_at)}); "
                                 f"{self.retry_hint('again')}")

    def check_rolled_back(self) -> None:
        quarantine.sync(self.ctx, self.queue, self.rule, self.env)
        for held in self.queue.quarantined(self.lane):
            if held.sha == self.sha:
                raise JobSkipped(self._rolled_back(held.sha, held.rolled_back_at, held.who))

    def _rolled_back(self, sha: str, at: float, who: str, *, ancestor_of: bool = False) -> str:
        what = (f"commit {self.sha[:12]} is an ancestor of {sha[:12]}, which" if ancestor_of
                else f"commit {self.sha[:12]}")
        return (f"{what} was rolled back in {self.lane} ({_when(at)}, by {who or 'someone'}); "
                f"automatic deploys leave it alone until a person runs `bluegreen release "
                f"allow {sha[:12]}` or deploys it by hand")

    # ---- after the fetch ----------------------------------------------------------------

    def after_fetch(self, work_dir: Path) -> None:
        """Ancestry checks, in the job's clone (where the commit now is)."""
        if not self.active:
            return
        deployed = self.queue.deployed(self.lane, exclude=self.job.id, limit=1)
        if deployed:
            last = deployed[0]
            if self._ancestor_of(work_dir, last.sha):
                raise JobSkipped(f"commit {self.sha[:12]} is an ancestor of {last.sha[:12]}, "
                                 f"which {self.lane} deployed last (job {last.job_id}): "
                                 f"deploying it would roll back; {self.retry_hint()}")
        for held in self.queue.quarantined(self.lane):
            if self._ancestor_of(work_dir, held.sha):
                raise JobSkipped(self._rolled_back(held.sha, held.rolled_back_at, held.who,
                                                   ancestor_of=True))
        self.ctx.say(f"== guards: {self.sha[:12]} is not behind what {self.lane} deployed "
                     "last, nor behind a rolled-back commit")

    def _ancestor_of(self, work_dir: Path, other: str) -> bool:
        timeout = self.settings.git_timeout
        if other == self.sha:
            return True
        if not build.ensure_commit(self.ctx, work_dir=work_dir, sha=other, env=self.env,
                                   timeout=timeout):
            self.ctx.say(f"== guards: {other[:12]} is not in the clone (history rewritten?); "
                         "cannot compare with it")
            return False
        found = build.is_ancestor(self.ctx, work_dir=work_dir, ancestor=self.sha,
                                  descendant=other, env=self.env, timeout=timeout)
        if found is None:
            self.ctx.say(f"== guards: git could not compare {self.sha[:12]} with {other[:12]}")
        return bool(found)

    # ---- Jenkins notifications ----------------------------------------------------------

    def check_artifact_commit(self) -> None:
        """A Jenkins build's commit must not be a rolled-back one (exact match: no clone)."""
        if not self.active:
            return
        self.check_rolled_back()
