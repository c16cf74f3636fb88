"""The long-running processes: `serve` (waitress + workers) and `poll` (poller, optionally
with the workers). Both stop cleanly on SIGTERM: stop taking work, let a running deploy
finish within service.shutdown_grace, then stop it and record it as interrupted. A second
SIGTERM skips the grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bluegreen.automation.httpserver import Server
from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.poller import ERROR, Poller
from bluegreen.automation.settings import Secrets, Settings
from bluegreen.automation.worker import Runner
from bluegreen.automation.wsgi import HookApp
from bluegreen.errors import BluegreenError

log = logging.getLogger("bluegreen.automation.service")


class _Stop(SystemExit):
    """Raised from the SIGTERM handler; waitress' run loop exits on SystemExit."""


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _write_runtime(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    tmp.replace(path)


def serve(settings: Settings, secrets: Secrets, *, environ: dict[str, str] | None = None) -> int:
    queue = JobQueue(settings.db_path)
    runner = Runner(settings, secrets, queue, environ=environ)
    runner.start()
    started = time.time()

    def health() -> tuple[bool, dict[str, Any]]:
        workers = runner.alive()
        return all(workers.values()), {
            "workers": workers,
            "counts": queue.counts(),
            "interrupted_on_start": runner.interrupted_on_start,
            "uptime_seconds": round(time.time() - started, 1),
        }

    app = HookApp(settings, secrets, queue, wake=runner.wake, health=health)
    service = settings.service
    server: Any = None
    runtime = service.state_dir / "serve.json"
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            log.warning("second signal: stopping running jobs now")
            runner.cancel_now()
            return
        stopping.set()
        log.info("signal %d: shutting down (grace %.0fs for a running job)", signum,
                 service.shutdown_grace)
        raise _Stop(0)

    try:
        with _signals(on_signal):
            try:
                # waitress, with deadlines and fair limits for slow clients (httpserver.py)
                try:
                    server = Server(app, service, max_body_bytes=service.max_body_bytes)
                except OSError as exc:
                    raise BluegreenError(
                        f"cannot listen on {service.listen}:{service.port}: "
                        f"{exc.strerror or exc}", phase="serve",
                        hint="is another process using that port? set service.port (or "
                        "--port), or service.listen") from None
                url = server.url
                _write_runtime(runtime, {"pid": os.getpid(), "url": url, "started_at": started})
                log.info("listening on %s (state %s, lanes %s; header_timeout %gs, "
                         "connection_limit %d, per client %s)", url, service.state_dir,
                         ", ".join(settings.lanes) or "none", service.header_timeout,
                         service.connection_limit, service.client_connection_limit or "any")
                server.run()
            except _Stop:
                pass
            finally:
                if server is not None:
                    server.close()
                runtime.unlink(missing_ok=True)
                runner.stop(service.shutdown_grace)
    except _Stop:  # a signal that landed between the inner finally and here
        runner.stop(service.shutdown_grace)
    log.info("stopped")
    return 0


def poll(settings: Settings, secrets: Secrets, *, once: bool, run_jobs: bool,
         environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    queue = JobQueue(settings.db_path)
    if not settings.polls:
        log.error("%s has no [[poll]] targets", settings.source)
        return 2
    if once:
        poller = Poller(settings, queue, env=env)
        results = [(t, poller.poll_once(t)) for t in settings.polls]
        for target, result in results:
            jobs = f" jobs={list(result.job_ids)}" if result.job_ids else ""
            print(f"{target.remote} {target.branch}: {result.status} {result.sha[:12]}{jobs}"
                  f"{' ' + result.detail if result.detail else ''}".rstrip())
        return 1 if any(r.status == ERROR for _, r in results) else 0

    runner = Runner(settings, secrets, queue, environ=env) if run_jobs else None
    if runner is not None:
        runner.start()
    poller = Poller(settings, queue, env=env,
                    on_enqueued=runner.wake if runner is not None else None)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and runner is not None:
            runner.cancel_now()
        log.info("signal %d: stopping the poller", signum)
        stop.set()

    with _signals(on_signal):
        log.info("polling %d target(s)%s", len(settings.polls),
                 " and running jobs" if runner else " (jobs run in `bluegreen serve`)")
        poller.run(stop)
        if runner is not None:
            runner.stop(settings.service.shutdown_grace)
    log.info("stopped")
    return 0
