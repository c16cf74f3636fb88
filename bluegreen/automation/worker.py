"""The workers: one thread per lane (app/environment), each running that lane's jobs in order.

Only one process may run workers for a state dir at a time (an flock on runner.lock). That
is what makes the restart rule sound: whoever holds the lock and finds a job `running` knows
its process died mid-job, and marks it `interrupted` instead of running it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from bluegreen.automation import build, jenkins_notify, jenkins_trigger
from bluegreen.automation.deploy_command import child_env, render_argv, substitute
from bluegreen.automation.events import BuildEvent, PushEvent, event_from_dict
from bluegreen.automation.guards import Guard
from bluegreen.automation.jobqueue import FAILED, INTERRUPTED, SKIPPED, SUCCEEDED, Job, JobQueue
from bluegreen.automation.rules import BUILD, DEPLOY_ARTIFACT, JENKINS, Rule
from bluegreen.automation.settings import Secrets, Settings
from bluegreen.automation.steps import (
    JobCancelled,
    JobContext,
    JobFailed,
    JobSkipped,
    tail_lines,
)
from bluegreen.errors import BluegreenError

log = logging.getLogger("bluegreen.automation.worker")

INTERRUPTED_ON_START = ("interrupted: the service stopped while this job was running; not "
                        "retried - check the app with `fab status` and deploy again if needed")
INTERRUPTED_ON_STOP = ("interrupted: the service was stopped (grace period over) while this "
                       "job was running; not retried - check the app with `fab status`")
IDLE_CHECK = 1.0  # seconds; picks up jobs another process (bluegreen poll) enqueued


@dataclass(frozen=True)
class Outcome:
    summary: str
    exit_code: int | None = None


class RunnerLockHeld(BluegreenError):
    pass


def _jenkins_session(settings: Settings, secrets: Secrets) -> requests.Session:
    session = requests.Session()
    if settings.jenkins.user and secrets.jenkins_api_token is not None:
        session.auth = (settings.jenkins.user, secrets.jenkins_api_token.value.decode())
    return session


def _deploy(ctx: JobContext, queue: JobQueue, job: Job, rule: Rule, *, artifact: Path,
            version: str, who: str, env: dict[str, str]) -> Outcome:
    argv = render_argv(rule.deploy_command, config=rule.config, artifact=str(artifact),
                       version=version, who=who)
    queue.note(job.id, deploy_argv=argv)
    result = ctx.run("deploy", argv, env=env, timeout=rule.deploy_timeout, check=False)
    if result.returncode != 0:
        raise JobFailed(f"deploy failed (exit {result.returncode})", exit_code=result.returncode)
    return Outcome(f"deployed {version[:12]} of {rule.app}/{rule.environment}", 0)


def execute(job: Job, rule: Rule, settings: Settings, secrets: Secrets, queue: JobQueue,
            ctx: JobContext, environ: dict[str, str]) -> Outcome:
    """Run one job to its end. Raises JobFailed / JobCancelled / JobSkipped (guards.py)."""
    event = event_from_dict(job.event)
    build_url = event.build_url if isinstance(event, BuildEvent) else ""
    env = child_env(environ, job_id=job.id, commit=job.sha, branch=job.branch,
                    build_url=build_url, repo=job.repo, withheld=settings.withheld_env())
    state_dir = settings.service.state_dir
    guard = Guard(ctx, job, rule, settings, queue, env)
    work_dir = build.work_dir_for(rule, state_dir / "work")
    if rule.action == BUILD and isinstance(event, PushEvent):
        guard.before_fetch()
        build.checkout(ctx, work_dir=work_dir, clone_url=rule.clone_url, branch=event.branch,
                       sha=event.sha, env=env, timeout=settings.git_timeout)
        guard.after_fetch(work_dir)
        artifact = build.build_artifact(ctx, rule, work_dir=work_dir, env=env)
        return _deploy(ctx, queue, job, rule, artifact=artifact, version=event.sha,
                       who=event.who, env=env)
    if rule.action == JENKINS and isinstance(event, PushEvent):
        guard.before_fetch()
        if rule.clone_url and guard.active:
            build.fetch_commit(ctx, work_dir=work_dir, clone_url=rule.clone_url,
                               branch=event.branch, sha=event.sha, env=env,
                               timeout=settings.git_timeout)
            guard.after_fetch(work_dir)
        values = {"branch": event.branch, "sha": event.sha, "repo": event.repo,
                  "who": event.who, "job_id": str(job.id)}
        parameters = {k: substitute(v, values) for k, v in rule.jenkins_parameters.items()}
        with _jenkins_session(settings, secrets) as session:
            ctx.say(f"== jenkins: buildWithParameters {rule.jenkins_job} {sorted(parameters)}")
            queue_url = jenkins_trigger.trigger(
                session, base_url=settings.jenkins.url, job_name=rule.jenkins_job,
                parameters=parameters, timeout=settings.jenkins.request_timeout)
            ctx.say(f"== jenkins: queued as {queue_url}")
            build_url = jenkins_trigger.wait_for_build(
                session, queue_url, poll_interval=settings.jenkins.queue_poll_interval,
                timeout=settings.jenkins.queue_timeout,
                request_timeout=settings.jenkins.request_timeout, cancel=ctx.cancel)
        queue.note(job.id, build_url=build_url)
        ctx.say(f"== jenkins: build started at {build_url}")
        return Outcome(f"Jenkins build started: {build_url}")
    if rule.action == DEPLOY_ARTIFACT and isinstance(event, BuildEvent):
        guard.check_artifact_commit()
        with _jenkins_session(settings, secrets) as session:
            artifact = jenkins_notify.fetch_artifact(
                ctx, session, event, pattern=rule.artifact, jenkins_url=settings.jenkins.url,
                dest_dir=state_dir / "artifacts" / str(job.id),
                timeout=settings.jenkins.artifact_timeout,
                max_bytes=settings.jenkins.max_artifact_bytes,
                require_checksum=rule.require_checksum)
        return _deploy(ctx, queue, job, rule, artifact=artifact, version=event.version,
                       who=event.who, env=env)
    raise JobFailed(f"rule {rule.name!r} ({rule.action}) cannot act on a {event.kind} event")


class Runner:
    """Owns the worker threads. start() -> wake(lane) as jobs arrive -> stop(grace)."""

    def __init__(self, settings: Settings, secrets: Secrets, queue: JobQueue, *,
                 environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.secrets = secrets
        self.queue = queue
        self.environ = dict(os.environ if environ is None else environ)
        self._stopping = threading.Event()  # no new jobs
        self._cancel = threading.Event()  # stop the running step now
        self._wakeups = {lane: threading.Event() for lane in settings.lanes}
        self._threads: dict[str, threading.Thread] = {}
        self._lock_file: IO[str] | None = None
        self.interrupted_on_start: list[int] = []

    def start(self) -> None:
        state_dir = self.settings.service.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_file = (state_dir / "runner.lock").open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise RunnerLockHeld(
                f"another process already runs jobs for {state_dir}",
                phase="start", hint="stop it first (only one `bluegreen serve` or "
                "`bluegreen poll --run-jobs` per state dir)") from None
        self._lock_file = lock_file
        for job in self.queue.interrupt_running(INTERRUPTED_ON_START):
            self.interrupted_on_start.append(job.id)
            log.warning("job %d (%s, %s %s) was interrupted by a restart: reported, not "
                        "retried", job.id, job.lane, job.branch, job.sha[:12])
        lanes = self.settings.lanes
        for job_id in self.queue.abandon_pending(lanes, "failed: no rule in the config serves "
                                                 "this job's app/environment any more"):
            log.warning("job %d: its lane is no longer configured; marked failed", job_id)
        for lane in lanes:
            thread = threading.Thread(target=self._lane_loop, args=(lane,),
                                      name=f"lane:{lane}", daemon=True)
            self._threads[lane] = thread
            thread.start()

    def wake(self, lane: str) -> None:
        event = self._wakeups.get(lane)
        if event is not None:
            event.set()

    def alive(self) -> dict[str, bool]:
        return {lane: t.is_alive() for lane, t in self._threads.items()}

    def stop(self, grace: float) -> None:
        """Take no new jobs; let running ones finish for `grace` seconds, then stop them."""
        self._stopping.set()
        for event in self._wakeups.values():
            event.set()
        deadline = time.monotonic() + grace
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads.values()):
            log.warning("grace period over: stopping the running jobs")
            self._cancel.set()
            for thread in self._threads.values():
                thread.join(60)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def cancel_now(self) -> None:
        self._stopping.set()
        self._cancel.set()
        for event in self._wakeups.values():
            event.set()

    def _lane_loop(self, lane: str) -> None:
        wakeup = self._wakeups[lane]
        quiet = self.settings.service.quiet_period
        while not self._stopping.is_set():
            try:
                job = self.queue.claim_next(lane, quiet_period=quiet)
                if job is None:
                    due = self.queue.seconds_until_due(lane, quiet)
                    wakeup.wait(IDLE_CHECK if due is None else min(IDLE_CHECK, max(due, 0.01)))
                    wakeup.clear()
                    continue
            except Exception:  # a locked or broken db must not end the lane for good
                log.exception("lane %s: could not read the queue; retrying", lane)
                wakeup.wait(IDLE_CHECK)
                continue
            try:
                self._run(job)
            except Exception as exc:  # a bug around a job must not leave it `running`
                log.exception("job %d: internal error", job.id)
                with contextlib.suppress(Exception):
                    self.queue.finish(job.id, FAILED, f"internal error: {type(exc).__name__}")

    def _run(self, job: Job) -> None:
        log_path = self.settings.service.state_dir / "logs" / f"job-{job.id}.log"
        self.queue.note(job.id, log_path=str(log_path))
        ctx = JobContext(job.id, log_path, self._cancel)
        log.info("job %d started: %s %s %s@%s", job.id, job.action, job.lane, job.branch,
                 job.sha[:12])
        ctx.say(f"job {job.id}: {job.action} for {job.lane} from {job.provider} "
                f"({job.who}) branch {job.branch!r} commit {job.sha or '-'}")
        state, exit_code = FAILED, None
        try:
            rule = self.settings.rule(job.rule)
            if rule is None:
                raise JobFailed(f"rule {job.rule!r} is no longer in the config")
            outcome = execute(job, rule, self.settings, self.secrets, self.queue, ctx,
                              self.environ)
            state, summary, exit_code = SUCCEEDED, outcome.summary, outcome.exit_code
        except JobFailed as exc:
            summary, exit_code = exc.summary, exc.exit_code
        except JobSkipped as exc:
            state, summary = SKIPPED, exc.summary
        except JobCancelled:
            state, summary = INTERRUPTED, INTERRUPTED_ON_STOP
        except Exception as exc:  # a bug in one job must not stop the lane
            log.exception("job %d crashed", job.id)
            summary = f"internal error: {type(exc).__name__}: {exc}"
        ctx.say(f"job {job.id}: {state}: {summary}")
        ctx.close()
        tail = tail_lines(log_path, self.settings.service.log_tail_lines)
        self.queue.finish(job.id, state, summary, exit_code=exit_code, log_tail=tail)
        level = logging.INFO if state in (SUCCEEDED, SKIPPED) else logging.WARNING
        log.log(level, "job %d %s: %s (log: %s)", job.id, state, summary, log_path)
