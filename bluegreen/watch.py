"""The window after a traffic change: does the new slot keep serving real pages?

A health endpoint that answers 200 proves little: a build can pass it while every page
answers 500, or crash a second later. For `watch.seconds` after every switch, bluegreen
watches the new slot with what it can see without any extra system:
- the slot's processes on every app host (a crash is a breach at once);
- requests through every front door to `watch.probe_paths` (5xx or no answer: errors);
- the router's own per-slot counters, when the router keeps them (real users' requests).
`judge` is pure; the loop only gathers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bluegreen.config import Watch
from bluegreen.routers.base import Router, SlotCounters, bucket_delta, quantile


@dataclass
class Tally:
    """What the window saw of the new slot."""

    requests: int = 0
    errors: int = 0  # 5xx answers and requests that got no answer
    latencies_ms: list[float] = field(default_factory=list)
    source: str = "probes"  # probes | router counters + probes
    # the router's latency histogram over the window (upper bound ms -> requests), and
    # the requests slower than its last bound: real users' latency, where it is counted
    buckets: dict[float, int] = field(default_factory=dict)
    slower: int = 0

    def add(self, *, failed: bool, ms: float | None = None) -> None:
        self.requests += 1
        self.errors += int(failed)
        if ms is not None:
            self.latencies_ms.append(ms)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        if any(self.buckets.values()) or self.slower:
            # the probes join the router's histogram, each in its bucket
            merged = dict(self.buckets)
            slower = self.slower
            bounds = sorted(merged)
            for ms in self.latencies_ms:
                bound = next((b for b in bounds if ms <= b), None)
                if bound is None:
                    slower += 1
                else:
                    merged[bound] += 1
            return quantile(merged.items(), slower, 0.99)
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def add_latency(self, before: SlotCounters | None, now: SlotCounters | None) -> None:
        """The router's histogram between two readings (a drop: the router restarted)."""
        if now is None or not now.latency_ms:
            return
        if before is None or now.requests < before.requests:
            before = SlotCounters()
        for bound, n in bucket_delta(before.latency_ms, now.latency_ms):
            self.buckets[bound] = self.buckets.get(bound, 0) + n
        self.slower += max(0, now.latency_slower - before.latency_slower)

    def to_dict(self) -> dict[str, object]:
        p99 = self.p99_ms
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4), "source": self.source,
                "p99_ms": round(p99, 1) if p99 is not None else None}


def judge(tally: Tally, cfg: Watch, elapsed: float) -> str:
    """The breach, in words, or "" while the slot is fine (or there is too little to say)."""
    if tally.requests < cfg.min_requests:
        return ""
    if tally.error_rate > cfg.max_error_rate:
        return (f"5xx {tally.error_rate:.1%} > {cfg.max_error_rate:.1%} over {elapsed:.0f} s "
                f"({tally.errors} of {tally.requests} requests failed)")
    p99 = tally.p99_ms
    if cfg.max_p99_ms and p99 is not None and p99 > cfg.max_p99_ms:
        return f"p99 {p99:.0f} ms > {cfg.max_p99_ms:.0f} ms over {elapsed:.0f} s"
    return ""


def counted(before: SlotCounters | None, now: SlotCounters | None) -> tuple[int, int]:
    """(requests, errors) between two counter readings; a drop means the router restarted."""
    if now is None:
        return 0, 0
    if before is None or now.requests < before.requests:
        before = SlotCounters()
    errors = (now.responses.get("5xx", 0) - before.responses.get("5xx", 0)
              + now.upstream_errors - before.upstream_errors)
    return now.requests - before.requests, max(0, errors)


@dataclass(frozen=True)
class WatchReport:
    seconds: float
    tally: Tally
    breach: str


def watch(cfg: Watch, slot: str, routers: list[Router], *,
          crashed: Callable[[], list[str]], say: Callable[[str], None]) -> WatchReport:
    """Watch `slot` for cfg.seconds; return early with the breach when there is one."""
    tally = Tally()
    start = time.monotonic()
    baseline = {r.label: _slot_counters(r, slot) for r in routers}
    if any(c is not None for c in baseline.values()):
        tally.source = "router counters + probes"
    last_said = start
    while True:
        elapsed = time.monotonic() - start
        down = crashed()
        if down:
            return WatchReport(elapsed, tally, f"slot {slot} exited on {', '.join(down)} "
                                                f"{elapsed:.1f} s after the switch")
        for router in routers:
            counts = baseline[router.label] is not None
            for path in cfg.probe_paths:
                answer = router.front_door_request(path)
                if counts and answer.status:
                    continue  # it reached the router, which counts it below: once, not twice
                tally.add(failed=answer.failed, ms=answer.ms)
        seen = Tally(tally.requests, tally.errors, list(tally.latencies_ms), tally.source)
        for router in routers:
            now = _slot_counters(router, slot)
            requests, errors = counted(baseline[router.label], now)
            seen.requests += requests
            seen.errors += errors
            seen.add_latency(baseline[router.label], now)
        breach = judge(seen, cfg, elapsed)
        if breach:
            return WatchReport(elapsed, seen, breach)
        if elapsed >= cfg.seconds:
            return WatchReport(elapsed, seen, "")
        if time.monotonic() - last_said >= 5:
            last_said = time.monotonic()
            say(f"    watching {slot}: {seen.requests} requests, {seen.errors} failed, "
                f"{cfg.seconds - elapsed:.0f} s to go")
        time.sleep(min(cfg.interval, max(0.0, cfg.seconds - elapsed)))


def _slot_counters(router: Router, slot: str) -> SlotCounters | None:
    counters = router.counters()
    return counters.get(slot) if counters else None
