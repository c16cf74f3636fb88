"""Load client for the zero-failed-requests check and benchmark: records every single request.

Four classes of traffic run at once, each counted on its own, because each one breaks
in a different way during a switch:

  ka_get    keep-alive GET  (one requests.Session per worker, reused connection)
  ka_post   keep-alive POST (a sent POST is never retried by nginx, so it shows drops)
  fresh_get GET on a new connection each time, with ``Connection: close``
  slow      GET /slow?s=1.5 on keep-alive, so long requests are always in flight

A failure is any exception or any non-2xx status. No client retry may hide a failure:
every session mounts an HTTPAdapter whose urllib3 ``Retry`` is zero for every kind
(connect, read, status, other, redirect) and redirects are not followed. urllib3 still
checks, before it *sends*, whether a pooled idle connection was already closed by the
peer (``is_connection_dropped``) and then opens a new one; that is not a retry of a sent
request, and a request sent on a connection that the server closes a moment later fails
and is recorded.

All times are ``time.monotonic()`` seconds (CLOCK_MONOTONIC is system-wide on Linux, so
another process on the same host may record switch windows with its own
``time.monotonic()``). ``LoadResult.wall_offset`` converts: wall = mono + wall_offset.

Library use::

    gen = LoadGen("http://127.0.0.1:8080")
    gen.start()
    with gen.window():          # or collect (start, end) tuples yourself
        switch()
    result = gen.stop()         # or stop(windows=[(t0, t1), ...])
    print(result.summary())
    print(result.result_line())

CLI: ``python -m testkit.loadgen http://127.0.0.1:8080 --duration 20 [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

CLASSES: tuple[str, ...] = ("ka_get", "ka_post", "fresh_get", "slow")
Window = tuple[float, float]


@dataclass(frozen=True)
class Record:
    """One request, successful or not. ``error`` is the failure kind, "" when ok."""

    cls: str
    start: float
    end: float
    ok: bool
    status: int  # 0 when no response was received
    error: str
    version: str  # "" when unknown (no response, or no header and no parsable body)


@dataclass(frozen=True)
class ClassConfig:
    """How many workers of one class, and how long each sleeps between its requests.

    A pause keeps the load steady and under what the stdlib demo app can serve on a small
    machine: an overloaded backend times out, and that would blur what a switch does.
    """

    workers: int
    pause: float


DEFAULT_MIX: dict[str, ClassConfig] = {
    # Keep-alive workers send the next request as soon as the previous answer is read:
    # that is when a connection closed by the server (e.g. by a reload) races with a
    # request already on the wire. With a pause, urllib3 notices the close before it
    # sends and reconnects, and the benchmark would stop seeing the problem.
    "ka_get": ClassConfig(workers=3, pause=0.0),
    "ka_post": ClassConfig(workers=3, pause=0.0),
    # A small pause: each fresh request costs a connect + TIME_WAIT socket on the host.
    "fresh_get": ClassConfig(workers=2, pause=0.005),
    # 4 workers staggered over 1.5 s: 3-4 long requests in flight at any moment
    "slow": ClassConfig(workers=4, pause=0.0),
}


def no_retry_session(pool_size: int = 1) -> requests.Session:
    """A Session that never retries anything, so every failure reaches our records."""
    retry = Retry(
        total=0,
        connect=0,
        read=0,
        redirect=0,
        status=0,
        other=0,
        raise_on_redirect=False,  # a 3xx is returned as-is and counted as non-2xx
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # never route loopback traffic through an env proxy
    return session


def error_kind(exc: BaseException) -> str:
    """Name the root cause of a requests/urllib3 exception.

    requests wraps urllib3, which wraps http.client / socket errors, in several layers
    (ConnectionError -> MaxRetryError -> ProtocolError -> ConnectionResetError). The
    benchmark wants the innermost one: RemoteDisconnected, ConnectionResetError,
    ConnectionRefusedError, ReadTimeoutError, ...
    """
    seen: set[int] = set()
    cur: BaseException = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt: BaseException | None = None
        if isinstance(cur, urllib3.exceptions.MaxRetryError) and cur.reason is not None:
            nxt = cur.reason
        elif isinstance(cur, urllib3.exceptions.ProtocolError) and len(cur.args) > 1:
            arg = cur.args[1]
            nxt = arg if isinstance(arg, BaseException) else None
        elif isinstance(cur, requests.RequestException) and cur.args:
            arg = cur.args[0]
            nxt = arg if isinstance(arg, BaseException) else None
        if nxt is None:
            nxt = cur.__cause__
        if nxt is None and isinstance(cur, urllib3.exceptions.NewConnectionError):
            nxt = cur.__context__  # ConnectionRefusedError lives here
        if nxt is None:
            break
        cur = nxt
    return type(cur).__name__


def _version_of(resp: requests.Response) -> str:
    """The app's version: X-App-Version header, else the body's known shapes."""
    header = resp.headers.get("X-App-Version")
    if header:
        return header.strip()
    text = resp.text.strip()
    # "hello from v1 (blue:8081)", "slow v1", "v1 123" (POST /echo)
    if text.startswith("hello from "):
        return text.split()[2]
    if text.startswith("slow "):
        return text.split()[1]
    return text.split()[0] if text and len(text) < 80 else ""


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _overlaps(rec: Record, windows: Sequence[Window]) -> bool:
    return any(rec.start <= end and rec.end >= start for start, end in windows)


def collapse(values: Iterable[str]) -> list[str]:
    """["v1", "v1", "v2", "v2", "v1"] -> ["v1", "v2", "v1"]."""
    out: list[str] = []
    for value in values:
        if value and (not out or out[-1] != value):
            out.append(value)
    return out


@dataclass
class ClassStats:
    requests: int = 0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadResult:
    """Every record of one run plus the (start, end) switch windows, and views on them."""

    records: list[Record]
    windows: list[Window] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    wall_offset: float = 0.0  # wall clock = monotonic + wall_offset
    label: str = ""
    # free-form facts from whoever drove the run (operations, phases, config), kept in
    # to_dict() so one JSON file tells the whole story
    meta: dict[str, Any] = field(default_factory=dict)

    # -- counts ------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    def per_class(self) -> dict[str, ClassStats]:
        stats = {cls: ClassStats() for cls in CLASSES}
        for rec in self.records:
            st = stats.setdefault(rec.cls, ClassStats())
            st.requests += 1
            if not rec.ok:
                st.failures += 1
                st.kinds[rec.error] = st.kinds.get(rec.error, 0) + 1
        return stats

    def failure_kinds(self) -> dict[str, int]:
        return dict(Counter(r.error for r in self.records if not r.ok).most_common())

    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    # -- latency -----------------------------------------------------------------------
    def latency(
        self,
        windows: Sequence[Window] | None = None,
        *,
        inside: bool = True,
        classes: Iterable[str] | None = None,
        ok_only: bool = True,
    ) -> tuple[float, float, int]:
        """(p50, p99, n) in milliseconds.

        windows=None: all requests. Otherwise requests overlapping any window
        (inside=True) or none of them (inside=False, i.e. steady state). The slow class
        is excluded by default: its 1.5 s sleep would swamp every percentile.
        """
        wanted = set(classes) if classes is not None else {"ka_get", "ka_post", "fresh_get"}
        lat = sorted(
            (r.end - r.start) * 1000.0
            for r in self.records
            if r.cls in wanted
            and (r.ok or not ok_only)
            and (windows is None or _overlaps(r, windows) == inside)
        )
        return percentile(lat, 50), percentile(lat, 99), len(lat)

    def switch_vs_steady(self, windows: Sequence[Window] | None = None) -> dict[str, Any]:
        """Latency during the given (or recorded) switch windows against the rest."""
        win = list(windows if windows is not None else self.windows)
        sw50, sw99, swn = self.latency(win, inside=True)
        st50, st99, stn = self.latency(win, inside=False)
        return {
            "switch": {"p50_ms": sw50, "p99_ms": sw99, "n": swn},
            "steady": {"p50_ms": st50, "p99_ms": st99, "n": stn},
        }

    # -- versions ----------------------------------------------------------------------
    def versions(self, classes: Iterable[str] | None = None, *, min_run: int = 1) -> list[str]:
        """Versions seen in request *start* order, consecutive repeats collapsed.

        Start order, not end order: a long request started on the old slot ends after the
        switch, and would otherwise show as a spurious flip back. Even so, a few requests
        right at a switch may interleave (client threads stamp their start a little
        before the request reaches nginx; after a reload, old workers may accept a few
        last connections). ``min_run`` drops runs shorter than that many requests before
        collapsing again, which removes that flicker but keeps any real flip back.
        """
        wanted = set(classes) if classes is not None else {"ka_get", "ka_post", "fresh_get"}
        recs = sorted((r for r in self.records if r.ok and r.cls in wanted and r.version),
                      key=lambda r: r.start)
        runs: list[list[Any]] = []  # [version, count]
        for rec in recs:
            if runs and runs[-1][0] == rec.version:
                runs[-1][1] += 1
            else:
                runs.append([rec.version, 1])
        return collapse(v for v, n in runs if n >= min_run)

    def stable_versions(self) -> list[str]:
        """versions() without switch-time flicker (runs of fewer than 5 requests)."""
        return self.versions(min_run=5)

    # -- output ------------------------------------------------------------------------
    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        p50, p99, n = self.latency()
        out: dict[str, Any] = {
            "label": self.label,
            "duration_s": round(self.ended - self.started, 3),
            "total": self.total,
            "failed": self.failed,
            "per_class": {k: asdict(v) for k, v in self.per_class().items()},
            "failure_kinds": self.failure_kinds(),
            "latency": {"p50_ms": p50, "p99_ms": p99, "n": n},
            "windows": self.windows,
            "switch_vs_steady": self.switch_vs_steady(),
            "versions": self.stable_versions(),
            "versions_raw": self.versions(),
            "meta": self.meta,
        }
        if with_records:
            out["records"] = [asdict(r) for r in self.records]
        return out

    def summary(self) -> str:
        lines = [f"load {self.label or ''} {self.ended - self.started:.1f}s".rstrip()]
        lines.append(f"  {'class':<10}{'requests':>9}{'failed':>8}  kinds")
        for cls, st in self.per_class().items():
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(st.kinds.items())) or "-"
            lines.append(f"  {cls:<10}{st.requests:>9}{st.failures:>8}  {kinds}")
        p50, p99, _ = self.latency()
        lines.append(f"  latency all      p50={p50:.1f}ms p99={p99:.1f}ms")
        if self.windows:
            sv = self.switch_vs_steady()
            sw, st = sv["switch"], sv["steady"]
            lines.append(
                f"  latency switch   p50={sw['p50_ms']:.1f}ms p99={sw['p99_ms']:.1f}ms "
                f"(n={sw['n']}, {len(self.windows)} windows)"
            )
            lines.append(
                f"  latency steady   p50={st['p50_ms']:.1f}ms p99={st['p99_ms']:.1f}ms "
                f"(n={st['n']})"
            )
        vers = self.stable_versions()
        shown = " > ".join(vers if len(vers) <= 12 else [*vers[:6], "...", *vers[-5:]])
        lines.append(f"  versions ({len(vers)} runs, {len(self.versions())} with switch-time"
                     f" flicker): {shown or '-'}")
        return "\n".join(lines)

    def result_line(self) -> str:
        """One grep-able line: RESULT <label> ok|FAIL total= failed= per class, latency."""
        parts = [f"RESULT {self.label or 'load'}", "ok" if self.failed == 0 else "FAIL"]
        parts.append(f"total={self.total} failed={self.failed}")
        for cls, st in self.per_class().items():
            parts.append(f"{cls}={st.failures}/{st.requests}")
        p50, p99, _ = self.latency()
        parts.append(f"p50={p50:.1f}ms p99={p99:.1f}ms")
        if self.windows:
            sw = self.switch_vs_steady()["switch"]
            parts.append(f"switch_p50={sw['p50_ms']:.1f}ms switch_p99={sw['p99_ms']:.1f}ms")
        parts.append(f"versions={len(self.stable_versions())}")
        return " ".join(parts)


class LoadGen:
    """Runs the four classes in threads against ``base_url`` until stop() or max_duration."""

    def __init__(
        self,
        base_url: str,
        *,
        mix: dict[str, ClassConfig] | None = None,
        slow_seconds: float = 1.5,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_duration: float = 180.0,
        post_body: bytes = b"x" * 512,
        label: str = "",
        host_header: str | None = None,
        verify: bool | str = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # an https front door: the CA file of its (self-signed) certificate, as requests
        # takes it; every session, the fresh-connection ones too, checks the certificate
        self.verify = verify
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(self.mix) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown load classes: {sorted(unknown)}")
        self.slow_seconds = slow_seconds
        # (connect, read): a read timeout bounds every request, so stop() always returns
        self.timeout = (connect_timeout, max(timeout, slow_seconds + 5.0))
        self.max_duration = max_duration
        self.post_body = post_body
        self.label = label
        self.headers = {"Host": host_header} if host_header else {}
        self.windows: list[Window] = []
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timer: threading.Timer | None = None
        self._started = 0.0
        self._ended = 0.0
        self._wall_offset = 0.0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LoadGen:
        if self._threads:
            raise RuntimeError("LoadGen already started")
        self._wall_offset = time.time() - time.monotonic()
        self._started = time.monotonic()
        for cls, cfg in self.mix.items():
            for i in range(cfg.workers):
                # stagger the slow workers so long requests overlap any instant evenly
                delay = self.slow_seconds * i / cfg.workers if cls == "slow" else 0.0
                t = threading.Thread(
                    target=self._worker, args=(cls, cfg.pause, delay), name=f"{cls}-{i}",
                    daemon=True,  # a stuck socket must never keep the benchmark alive
                )
                self._threads.append(t)
                t.start()
        # bounded: stop by itself after max_duration even if nobody calls stop()
        self._timer = threading.Timer(self.max_duration, self._stop.set)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self, windows: Sequence[Window] | None = None) -> LoadResult:
        """Stop every worker, wait for in-flight requests (bounded) and return results."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        deadline = time.monotonic() + self.timeout[0] + self.timeout[1] + 1.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._ended = time.monotonic()
        with self._lock:
            records = sorted(self._records, key=lambda r: r.start)
        return LoadResult(
            records=records,
            windows=[*self.windows, *(windows or [])],
            started=self._started,
            ended=self._ended,
            wall_offset=self._wall_offset,
            label=self.label,
        )

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early once the run has stopped."""
        self._stop.wait(seconds)

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """Record the duration of the block as a switch window."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.windows.append((start, time.monotonic()))

    def snapshot(self) -> LoadResult:
        """Results so far, without stopping (for progress reports)."""
        with self._lock:
            records = list(self._records)
        return LoadResult(records, list(self.windows), self._started, time.monotonic(),
                          self._wall_offset, self.label)

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    # -- workers -----------------------------------------------------------------------
    def _worker(self, cls: str, pause: float, delay: float) -> None:
        if delay and self._stop.wait(delay):
            return
        session = None if cls == "fresh_get" else no_retry_session()
        if session is not None:
            session.verify = self.verify
        try:
            while not self._stop.is_set():
                self._one(cls, session)
                if pause:
                    self._stop.wait(pause)
        finally:
            if session is not None:
                session.close()

    def _request(self, cls: str, session: requests.Session | None) -> requests.Response:
        if cls == "ka_get":
            assert session is not None
            return session.get(self.base_url + "/", headers=self.headers,
                               timeout=self.timeout, allow_redirects=False)
        if cls == "ka_post":
            assert session is not None
            return session.post(self.base_url + "/echo", data=self.post_body,
                                headers=self.headers, timeout=self.timeout,
                                allow_redirects=False)
        if cls == "slow":
            assert session is not None
            return session.get(f"{self.base_url}/slow?s={self.slow_seconds}",
                               headers=self.headers, timeout=self.timeout,
                               allow_redirects=False)
        # fresh_get: a brand-new session (so a brand-new TCP connection) per request, and
        # Connection: close so neither side keeps it
        with no_retry_session() as fresh:
            fresh.verify = self.verify
            return fresh.get(self.base_url + "/",
                             headers={**self.headers, "Connection": "close"},
                             timeout=self.timeout, allow_redirects=False)

    def _one(self, cls: str, session: requests.Session | None) -> None:
        start = time.monotonic()
        status, error, version, ok = 0, "", "", False
        try:
            resp = self._request(cls, session)
            status = resp.status_code
            version = _version_of(resp)
            ok = 200 <= status < 300
            if not ok:
                error = f"HTTP {status}"
        except Exception as exc:  # every exception is a failure to record, never to raise
            error = error_kind(exc)
        rec = Record(cls, start, time.monotonic(), ok, status, error, version)
        with self._lock:
            self._records.append(rec)


def run_for(base_url: str, duration: float, *, during: Callable[[LoadGen], None] | None = None,
            **kwargs: Any) -> LoadResult:
    """Run load for ``duration`` seconds (calling ``during(gen)`` in between), then stop."""
    gen = LoadGen(base_url, max_duration=duration + 60.0, **kwargs).start()
    end = time.monotonic() + duration
    try:
        if during is not None:
            during(gen)
        gen.wait(max(0.0, end - time.monotonic()))
    finally:
        result = gen.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="front door, e.g. http://127.0.0.1:8080")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (max 180)")
    parser.add_argument("--slow-seconds", type=float, default=1.5)
    parser.add_argument("--label", default="load")
    parser.add_argument("--json", help="write the result (with every record) here")
    args = parser.parse_args(argv)
    duration = min(args.duration, 180.0)  # bounded whatever the caller asks

    gen = LoadGen(args.url, slow_seconds=args.slow_seconds, max_duration=duration,
                  label=args.label).start()
    # SIGINT/SIGTERM end the run early but still print what was recorded
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: gen._stop.set())
    gen.wait(duration)
    result = gen.stop()
    print(result.summary())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result.to_dict(with_records=True), fh)
    print(result.result_line())
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
