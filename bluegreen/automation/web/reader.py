"""Reading an app's state for the page and /metrics: cached, never holding the deploy lock.

One AppReader per app. A read is what `fab status --json` shows (bluegreen.views.status:
recorded state, the lock's owner, the switch journal, each host's slots and each router),
plus the whole history. Reads go over SSH, so they are cached: a page polled every two
seconds by five people, and Prometheus scraping, share one read per `ttl`. A request
never waits for SSH once there is something to show: a stale snapshot is served while a
background thread refreshes it (one per app at a time), and a host that stops answering
costs the page nothing but an "as of" time. The SSH connections of one read are kept for
the next one, and closed a minute after the last.

history.jsonl is read whole once, then only what was appended since (its byte offset is
kept), so the counters /metrics derives from it are exact totals over the app's life,
monotonic, and the same after a restart of the service: no in-process counter can drift.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bluegreen import config as config_mod
from bluegreen.automation.web.catalog import AppEntry
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import Host
from bluegreen.layout import Layout

log = logging.getLogger("bluegreen.automation.web")

# seconds; upper bounds of bluegreen_operation_duration_seconds (a switch takes well under a
# second, a deploy of a large app minutes)
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0)
RECENT_ENTRIES = 200  # history entries kept in memory per app, for the timeline and chart
READ_CHUNK = 1 << 20  # bytes of history.jsonl read per request (Host.read's own limit)
OWNER_FILE = "owner.json"  # inside the lock directory (bluegreen.lock)
KEEP_CONNECTED = 60.0  # seconds an app's SSH connections stay open after the last read


# ---------------------------------------------------------------- history fields
# The history entry fields the page reads beyond the ones bluegreen writes today. Kept in
# one place so that they match what the after-switch watch records when it lands.


def failed_requests(entry: dict[str, Any]) -> int | None:
    """Requests that failed during the switch window, as the router counted them; None
    when the entry carries no measurement (the field is absent, not zero)."""
    value = entry.get("failed_requests")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def measured_requests(entry: dict[str, Any]) -> int | None:
    value = entry.get("requests")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def auto_reverted(entry: dict[str, Any]) -> bool:
    """An operation the after-switch watch undid by itself."""
    return bool(entry.get("auto_reverted")) or entry.get("result") == "auto-reverted"


# ---------------------------------------------------------------- history totals


@dataclass
class Durations:
    """One histogram: per-bucket counts (not cumulative; the last one is +Inf)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound),
                     len(DURATION_BUCKETS))
        self.buckets[index] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out

    def copy(self) -> Durations:
        return Durations(list(self.buckets), self.total, self.count)


@dataclass
class Totals:
    """Everything /metrics counts, over the whole history file."""

    operations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, result)
    durations: dict[str, Durations] = field(default_factory=dict)  # action -> ok runs only
    failed_requests: int = 0
    measured: int = 0  # entries that carried a failed-request count
    auto_reverts: int = 0
    unparseable: int = 0

    def add(self, entry: dict[str, Any]) -> None:
        action = str(entry.get("action") or "?")
        result = str(entry.get("result") or "?")
        self.operations[(action, result)] += 1
        seconds = entry.get("seconds")
        if result == "ok" and isinstance(seconds, int | float) and not isinstance(seconds, bool) \
                and seconds >= 0:
            self.durations.setdefault(action, Durations()).add(float(seconds))
        failed = failed_requests(entry)
        if failed is not None:
            self.failed_requests += failed
            self.measured += 1
        if auto_reverted(entry):
            self.auto_reverts += 1

    def copy(self) -> Totals:
        return Totals(Counter(self.operations),
                      {k: v.copy() for k, v in self.durations.items()},
                      self.failed_requests, self.measured, self.auto_reverts, self.unparseable)


class HistoryLog:
    """history.jsonl, followed: whole once, then only the appended bytes."""

    def __init__(self, keep: int = RECENT_ENTRIES) -> None:
        self.offset = 0
        self.totals = Totals()
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def reset(self) -> None:
        self.offset = 0
        self.totals = Totals()
        self.recent.clear()

    def update(self, host: Host, path: str) -> None:
        size = host.size(path)
        if size < self.offset:  # truncated or replaced: count again from the start
            log.info("history %s on %s shrank (%d < %d bytes): reading it again", path,
                     host.label, size, self.offset)
            self.reset()
        while self.offset < size:
            chunk = host.read(path, offset=self.offset,
                              limit=min(READ_CHUNK, size - self.offset)) or ""
            cut = chunk.rfind("\n")
            if cut < 0:
                if len(chunk) < READ_CHUNK:
                    break  # a line being appended right now: read it next time, whole
                cut = len(chunk) - 1  # a "line" of a megabyte is not an entry: skip it
            complete = chunk[:cut + 1]
            # bluegreen writes history with json.dumps (ASCII only), so characters are bytes
            self.offset += len(complete.encode())
            for line in complete.splitlines():
                if line.strip():
                    self._add(line)

    def _add(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            self.totals.unparseable += 1
            self.recent.append({"action": "?", "result": "unparseable history line"})
            return
        self.totals.add(entry)
        self.recent.append(entry)


# ---------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Snapshot:
    """One read of one app. `status` is views.status() of the last read that worked (kept
    when a later read fails, so the page can say "as of"); `error` is why the last read
    failed ("" when it worked)."""

    entry: AppEntry
    read_at: float  # when the last read (good or bad) finished
    status: dict[str, Any] | None
    status_at: float  # when `status` was read
    owner_extra: dict[str, Any]  # fields of the lock's owner record bluegreen.lock drops
    history: list[dict[str, Any]]  # oldest first, at most RECENT_ENTRIES
    totals: Totals
    secrets: tuple[str, ...]  # the app's [env] values: scrubbed from everything shown
    error: str = ""
    took: float = 0.0
    # traffic host -> slot -> {"requests", "responses": {"2xx": n, ...}, "upstream_errors"}:
    # the router's own per-slot counters, where its mode keeps them (lua, haproxy)
    counters: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


StatusFn = Callable[[Config, Fleet], dict[str, Any]]
CountersFn = Callable[[Config, Fleet], dict[str, dict[str, dict[str, Any]]]]


def _views_status(cfg: Config, fleet: Fleet) -> dict[str, Any]:
    from bluegreen import views  # the flow's modules, imported only once a read happens

    # history=0: the page follows history.jsonl itself (HistoryLog), whole and incremental
    return views.status(cfg, fleet, history=0)


def _router_counters(cfg: Config, fleet: Fleet) -> dict[str, dict[str, dict[str, Any]]]:
    """Each traffic host's per-slot counters; hosts whose router keeps none (reload mode)
    or cannot be asked right now are left out."""
    from bluegreen.routers import router_for

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for host in fleet.traffic_hosts:
        try:
            counted = router_for(cfg, host).counters()
        except BluegreenError:
            continue
        if counted:
            out[host.label] = {slot: {**asdict(c), "responses": dict(c.responses)}
                               for slot, c in counted.items()}
    return out


class AppReader:
    def __init__(self, entry: AppEntry, *, ttl: float = 2.0, status_fn: StatusFn = _views_status,
                 counters_fn: CountersFn = _router_counters,
                 fleet_factory: Callable[[Config], Fleet] = Fleet,
                 loader: Callable[[str], Config] = config_mod.load) -> None:
        self.entry = entry
        self.ttl = ttl
        self.status_fn = status_fn
        self.counters_fn = counters_fn
        self.fleet_factory = fleet_factory
        self.loader = loader
        self.history = HistoryLog()
        self._cfg: Config | None = None
        self._cfg_mtime: float | None = None
        self._lock = threading.Lock()
        self._fleet_lock = threading.Lock()  # one read at a time uses the connections
        self._fleet: Fleet | None = None
        self._timer: threading.Timer | None = None
        self._current: Snapshot | None = None
        self._refreshing: threading.Event | None = None  # set when the running read ends

    # ---- what callers use

    def snapshot(self, *, wait: float = 0.0) -> Snapshot | None:
        """The newest snapshot. A stale one starts a background refresh; `wait` is how long
        to wait for it (the first read of an app always waits, up to `wait`)."""
        with self._lock:
            current = self._current
            fresh = current is not None and time.time() - current.read_at < self.ttl
            done = self._refreshing
            if not fresh and done is None:
                done = self._refreshing = threading.Event()
                threading.Thread(target=self._refresh_in_background, args=(done,),
                                 name=f"bluegreen-ui-read-{self.entry.slug}",
                                 daemon=True).start()
        if not fresh and done is not None and wait > 0:
            done.wait(wait)
            with self._lock:
                current = self._current
        return current

    def secrets(self) -> tuple[str, ...]:
        """The app's [env] values as of the last read: scrubbed from everything shown."""
        current = self._current
        return current.secrets if current is not None else ()

    def refresh(self) -> Snapshot:
        """Read now, in this thread (tests, and the background refresher)."""
        with self._fleet_lock:
            snap = self._read()
            self._idle_timer()
        with self._lock:
            self._current = snap
        return snap

    # ---- inside

    def _read(self) -> Snapshot:
        began = time.time()
        previous = self._current
        secrets: tuple[str, ...] = previous.secrets if previous else ()
        owner_extra: dict[str, Any] = {}
        try:
            cfg = self._config()
            secrets = tuple(v for v in cfg.env.values() if len(v) >= 4)
            fleet = self._connected(cfg)
            status = self.status_fn(cfg, fleet)
            counters = self.counters_fn(cfg, fleet)
            primary = fleet.primary
            layout = Layout(primary.root)
            self.history.update(primary, layout.history)
            if status.get("lock") is not None:
                owner_extra = _owner_extra(primary, layout)
        except BluegreenError as exc:
            self._disconnect()  # the next read connects afresh
            error = exc.what.splitlines()[0] + (f" ({exc.hint})" if exc.hint else "")
            return self._failed(previous, error, began, secrets)
        except Exception:  # a bug must not take the page down: log it, show a line
            self._disconnect()
            log.exception("reading the state of %s failed", self.entry.config_path)
            return self._failed(previous, "internal error while reading (see the service "
                                "log)", began, secrets)
        now = time.time()
        return Snapshot(entry=self.entry, read_at=now, status=status, status_at=now,
                        owner_extra=owner_extra, history=list(self.history.recent),
                        totals=self.history.totals.copy(), secrets=secrets,
                        took=round(now - began, 3), counters=counters)

    def _connected(self, cfg: Config) -> Fleet:
        """The fleet of the last read, while the config is the same: its SSH connections
        are reused, so a page open for an hour does not open one connection per read."""
        if self._fleet is not None and self._fleet.cfg is not cfg:
            self._disconnect()
        if self._fleet is None:
            self._fleet = self.fleet_factory(cfg)
        return self._fleet

    def _disconnect(self) -> None:
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            fleet.close()

    def _idle_timer(self) -> None:
        """Close the connections once nobody has asked for KEEP_CONNECTED seconds."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(KEEP_CONNECTED, self._close_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _close_if_idle(self) -> None:
        if self._fleet_lock.acquire(blocking=False):  # a read in progress: it re-arms us
            try:
                self._disconnect()
            finally:
                self._fleet_lock.release()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._fleet_lock:
            self._disconnect()

    def _failed(self, previous: Snapshot | None, error: str, began: float,
                secrets: tuple[str, ...]) -> Snapshot:
        now = time.time()
        if previous is None:
            return Snapshot(entry=self.entry, read_at=now, status=None, status_at=0.0,
                            owner_extra={}, history=list(self.history.recent),
                            totals=self.history.totals.copy(), secrets=secrets, error=error,
                            took=round(now - began, 3))
        return replace(previous, read_at=now, error=error, took=round(now - began, 3))

    def _refresh_in_background(self, done: threading.Event) -> None:
        try:
            self.refresh()
        finally:
            with self._lock:
                self._refreshing = None
            done.set()

    def _config(self) -> Config:
        """The app's bluegreen.toml, read again when the file changes (what the next
        deploy will read)."""
        path = Path(self.entry.config_path)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = None
        if self._cfg is None or mtime != self._cfg_mtime:
            self._cfg = self.loader(self.entry.config_path)
            self._cfg_mtime = mtime
        return self._cfg


def _owner_extra(primary: Host, layout: Layout) -> dict[str, Any]:
    """Fields of the owner record that bluegreen.lock.Owner does not know (yet), such as the
    phase a run is in: read raw, only while a lock is held."""
    try:
        text = primary.read(f"{layout.lock}/{OWNER_FILE}")
        data = json.loads(text) if text else {}
    except (BluegreenError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in ("phase", "phase_started_at") if k in data}
