"""Poll a slot until it is healthy, quickly but without hammering it.

The interval starts short and doubles up to `health.interval` (0.05 s: at most 20 probes a
second, refused ones included: over SSH each refused probe is a channel the server opens
and logs), so an app that comes up in 200 ms is seen within a few tens of ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bluegreen import failpoints
from bluegreen.config import Health
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host

MIN_INTERVAL = 0.01


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str  # "200", "503", "connection refused", ...


@dataclass(frozen=True)
class HealthReport:
    elapsed: float
    probes: int
    last: str


def probe(host: Host, port: int, cfg: Health, address: str = "127.0.0.1") -> Probe:
    try:
        reply = host.http_get(port, cfg.path, timeout=cfg.request_timeout, address=address,
                              host_header=cfg.host_header or "localhost")
    except ConnectionRefusedError:
        return Probe(False, "connection refused")
    except (OSError, ValueError, EOFError) as exc:
        return Probe(False, f"{type(exc).__name__}: {exc}"[:200])
    return Probe(reply.status == cfg.status, f"HTTP {reply.status}")


def next_interval(current: float, last: Probe, cfg: Health) -> float:
    del last  # every probe costs a channel over SSH, refused or not
    return min(cfg.interval, max(MIN_INTERVAL, current * 2))


def wait_healthy(host: Host, port: int, cfg: Health, *,
                 alive: Callable[[], bool] | None = None) -> HealthReport:
    """Return once `cfg.successes` consecutive probes pass; raise BluegreenError on timeout.

    `alive` (optional) is checked between probes so a crashed app fails fast instead of
    burning the whole timeout.
    """
    start = time.monotonic()
    deadline = start + cfg.timeout
    interval, streak, probes = MIN_INTERVAL, 0, 0
    last = Probe(False, "not probed yet")
    next_alive_check = start + 0.5
    while True:
        last = probe(host, port, cfg)
        probes += 1
        failpoints.hit("health.probing")
        streak = streak + 1 if last.ok else 0
        if streak >= cfg.successes:
            return HealthReport(time.monotonic() - start, probes, last.detail)
        now = time.monotonic()
        if now >= deadline:
            break
        if alive is not None and now >= next_alive_check:
            next_alive_check = now + 0.5
            if not alive():
                raise BluegreenError(
                    f"the new process on port {port} exited before becoming healthy "
                    f"(last probe: {last.detail})", host=host.label, phase="health",
                    hint="read the app log above; fix the build or the start command")
        # between successes, probe at the short interval: the streak should close quickly
        interval = MIN_INTERVAL * 2 if last.ok else next_interval(interval, last, cfg)
        time.sleep(min(interval, max(0.0, deadline - now)))
    raise BluegreenError(
        f"port {port} did not become healthy within {cfg.timeout:g}s: "
        f"GET {cfg.path} wanted HTTP {cfg.status}, last probe: {last.detail} "
        f"({probes} probes)", host=host.label, phase="health",
        hint="read the app log above; raise health.timeout if the app is just slow to boot")
