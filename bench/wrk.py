"""Reading `wrk --latency` output, and the arithmetic bench/router_price.py judges by.

Pure functions, no processes: tests/unit/test_router_price.py feeds them wrk's real
output format.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# wrk prints times with these units (src/units.c: us, ms, s, m, h)
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkOutputError(ValueError):
    """wrk's output lacks a number the benchmark needs (it failed, or its format changed)."""


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: throughput, latency percentiles (ms), and everything that went wrong."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    socket_errors: int  # connect + read + write + timeout
    non_2xx: int

    @property
    def clean(self) -> bool:
        """Every request answered 2xx/3xx on a healthy socket: the numbers mean something."""
        return self.socket_errors == 0 and self.non_2xx == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_wrk(text: str) -> WrkRun:
    """The numbers of `wrk --latency` output; WrkOutputError names what is missing."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    pct = {m[1]: float(m[2]) * _TIME_UNITS_MS[m[3]] for m in _PCT.finditer(text)}
    missing = [what for what, found in (("Requests/sec", rps), ("N requests in", total),
                                        ("50% latency", pct.get("50")),
                                        ("99% latency", pct.get("99"))) if found is None]
    if missing:
        raise WrkOutputError(f"wrk output has no {', '.join(missing)} line (was --latency "
                             f"given, did wrk fail?): {text.strip()[-300:]!r}")
    assert rps is not None and total is not None  # for the type checker: checked above
    sock = _SOCKET.search(text)
    non = _NON2XX.search(text)
    return WrkRun(
        rps=float(rps[1]), p50_ms=pct["50"], p99_ms=pct["99"], requests=int(total[1]),
        seconds=float(total[2]) * _TIME_UNITS_MS[total[3]] / 1000.0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non_2xx=int(non[1]) if non else 0)


@dataclass(frozen=True)
class Price:
    """What one router costs against the plain nginx measured right before it, each round:
    medians over the rounds of the paired ratios (mode / plain of the same round)."""

    mode: str
    rps: float  # median of the mode's own runs
    p99_ms: float
    rps_ratio: float  # median over rounds of mode.rps / plain.rps (1.0: no price)
    p99_ratio: float  # median over rounds of mode.p99 / plain.p99
    rounds: int
    cpu_us: float = float("nan")  # the router's own CPU per request (median), microseconds
    cpu_ratio: float = float("nan")  # median over rounds of mode.cpu / plain.cpu

    def within(self, tolerance: float) -> bool:
        """Throughput at most `tolerance` below plain nginx, p99 at most that much above."""
        return self.rps_ratio >= 1.0 - tolerance and self.p99_ratio <= 1.0 + tolerance

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        return {**asdict(self), "within_goal": self.within(tolerance)}


def price(mode: str, pairs: Sequence[tuple[WrkRun, WrkRun]],
          cpu_pairs: Sequence[tuple[float, float]] = ()) -> Price:
    """`pairs`: (plain, mode) runs taken back to back, one pair per round. Pairing each
    run with the baseline run just before it cancels the drift of a shared machine's load
    (a noisy neighbour slows both runs of a pair alike). `cpu_pairs`: the routers' CPU
    microseconds per request in the same runs."""
    if not pairs:
        raise ValueError(f"no runs of {mode} to price")
    cpu: dict[str, float] = {}
    if cpu_pairs:
        cpu = {"cpu_us": statistics.median(m for _, m in cpu_pairs),
               "cpu_ratio": statistics.median(m / b for b, m in cpu_pairs)}
    return Price(
        mode=mode,
        rps=statistics.median(m.rps for _, m in pairs),
        p99_ms=statistics.median(m.p99_ms for _, m in pairs),
        rps_ratio=statistics.median(m.rps / b.rps for b, m in pairs),
        p99_ratio=statistics.median(m.p99_ms / b.p99_ms for b, m in pairs),
        rounds=len(pairs), **cpu)


def cpu_ticks(proc_stat: str) -> int:
    """utime + stime of one process (all its threads) from /proc/PID/stat, in clock ticks.
    The command name (field 2) may hold spaces and parentheses: count from the last ')'."""
    fields = proc_stat[proc_stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line


def cpu_us_per_request(ticks: int, requests: int, ticks_per_s: int = 100) -> float:
    """A router's own CPU time per request, in microseconds: what it costs whatever the
    machine's other load (which changes throughput and latency, but not this much)."""
    return ticks / ticks_per_s * 1e6 / requests if requests else float("nan")


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """`items` rotated by the round number: no mode always runs first (or last) of its
    round, where a warming or cooling machine would favour it."""
    k = round_index % len(items) if items else 0
    return [*items[k:], *items[:k]]
