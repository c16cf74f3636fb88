"""/metrics: the Prometheus text format, from the same cached reads as the page.

A custom collector, not process-global counters: every value is derived at scrape time
from the apps' recorded state and whole history (see reader.HistoryLog), so a restart of
the service, a deploy run from a laptop (which this process never sees) or two services
reading one app all give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from bluegreen.automation.jobqueue import STATES
from bluegreen.automation.web.reader import Snapshot

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest() writes, whatever is asked

# (name, type, help): the README's metrics list is this table
METRICS = (
    ("bluegreen_live_info", "gauge",
     "1 for the slot recorded live on each app host, with the version it runs"),
    ("bluegreen_operations_total", "counter",
     "deploys, switches, rollbacks (and unlocks, recoveries) in history, by result"),
    ("bluegreen_operation_duration_seconds", "histogram",
     "how long successful operations took, from history"),
    ("bluegreen_switch_failed_requests_total", "counter",
     "requests the router saw fail during switches; 0 while history records no measurement"),
    ("bluegreen_switch_measurements_total", "counter",
     "operations whose history entry carried a failed-request measurement"),
    ("bluegreen_auto_reverts_total", "counter",
     "operations the after-switch watch reverted by itself"),
    ("bluegreen_lock_held", "gauge", "1 while a run holds the app's deploy lock"),
    ("bluegreen_slot_healthy", "gauge", "1 when the slot answers its health check on the host"),
    ("bluegreen_slot_running", "gauge", "1 when the slot's process runs on the host"),
    ("bluegreen_status_code", "gauge",
     "what `fab status` would exit with: 0 ok, 4 unhealthy, 5 inconsistent"),
    ("bluegreen_state_read_ok", "gauge",
     "1 when the service's last read of the app's state worked"),
    ("bluegreen_jobs", "gauge", "automation jobs in the queue, by state"),
    ("bluegreen_router_requests_total", "counter",
     "requests the router sent to each slot since it started (lua and haproxy modes)"),
    ("bluegreen_router_responses_total", "counter",
     "responses from each slot by status class, as the router counted them"),
    ("bluegreen_router_upstream_errors_total", "counter",
     "connections to a slot that failed, as the router counted them"),
)
HELP = {name: text for name, _, text in METRICS}


class BluegreenCollector(Collector):
    """Yields every metric from `snapshots()` (one per app that has been read) and
    `job_counts()` (the queue), both called once per scrape."""

    def __init__(self, snapshots: Callable[[], Sequence[Snapshot]],
                 job_counts: Callable[[], dict[str, int]]) -> None:
        self.snapshots = snapshots
        self.job_counts = job_counts

    def collect(self) -> Iterable[Metric]:
        snaps = list(self.snapshots())
        yield from _state_metrics(snaps)
        yield from _history_metrics(snaps)
        yield from _router_metrics(snaps)
        jobs = GaugeMetricFamily("bluegreen_jobs", HELP["bluegreen_jobs"], labels=["state"])
        counts = self.job_counts()
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs


def _state_metrics(snaps: Sequence[Snapshot]) -> Iterable[Metric]:
    def gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, HELP[name], labels=labels)

    live = gauge("bluegreen_live_info", ["app", "host", "slot", "version"])
    lock = gauge("bluegreen_lock_held", ["app"])
    healthy = gauge("bluegreen_slot_healthy", ["app", "host", "slot"])
    running = gauge("bluegreen_slot_running", ["app", "host", "slot"])
    code = gauge("bluegreen_status_code", ["app"])
    read_ok = gauge("bluegreen_state_read_ok", ["app"])
    for snap in snaps:
        app = snap.entry.slug
        read_ok.add_metric([app], 0 if snap.error or snap.status is None else 1)
        status = snap.status
        if status is None or snap.error:
            continue  # nothing current to say: absent beats a stale 1 or a false 0
        code.add_metric([app], float(status.get("exit_code", 0)))
        lock.add_metric([app], 1 if status.get("lock") else 0)
        slot = status.get("live") or ""
        version = str(((status.get("slots") or {}).get(slot) or {}).get("version") or "")
        for host, seen in (status.get("app_hosts") or {}).items():
            if slot:
                live.add_metric([app, str(host), slot, version], 1)
            if not isinstance(seen, dict) or "unknown" in seen:
                continue  # an unreachable host's slots are unknown, not down
            for name in ("blue", "green"):
                here = seen.get(name) or {}
                healthy.add_metric([app, str(host), name], 1 if here.get("healthy") else 0)
                running.add_metric([app, str(host), name], 1 if here.get("running") else 0)
    yield from (live, lock, healthy, running, code, read_ok)


def _history_metrics(snaps: Sequence[Snapshot]) -> Iterable[Metric]:
    def counter(name: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(name, HELP[name], labels=labels)

    operations = counter("bluegreen_operations_total", ["app", "action", "result"])
    durations = HistogramMetricFamily("bluegreen_operation_duration_seconds",
                                      HELP["bluegreen_operation_duration_seconds"],
                                      labels=["app", "action"])
    failed = counter("bluegreen_switch_failed_requests_total", ["app"])
    measured = counter("bluegreen_switch_measurements_total", ["app"])
    reverts = counter("bluegreen_auto_reverts_total", ["app"])
    for snap in snaps:
        app, totals = snap.entry.slug, snap.totals
        if snap.status is None and not totals.operations:
            continue  # never read: no history to count yet
        for (action, result), n in sorted(totals.operations.items()):
            operations.add_metric([app, action, result], n)
        for action, hist in sorted(totals.durations.items()):
            durations.add_metric([app, action], buckets=hist.cumulative(),
                                 sum_value=round(hist.total, 6))
        failed.add_metric([app], totals.failed_requests)
        measured.add_metric([app], totals.measured)
        reverts.add_metric([app], totals.auto_reverts)
    yield from (operations, durations, failed, measured, reverts)


def _router_metrics(snaps: Sequence[Snapshot]) -> Iterable[Metric]:
    labels = ["app", "host", "slot"]
    requests = CounterMetricFamily("bluegreen_router_requests_total",
                                   HELP["bluegreen_router_requests_total"], labels=labels)
    responses = CounterMetricFamily("bluegreen_router_responses_total",
                                    HELP["bluegreen_router_responses_total"],
                                    labels=[*labels, "code"])
    errors = CounterMetricFamily("bluegreen_router_upstream_errors_total",
                                 HELP["bluegreen_router_upstream_errors_total"], labels=labels)
    for snap in snaps:
        for host, slots in sorted(snap.counters.items()):
            for slot, c in sorted(slots.items()):
                requests.add_metric([snap.entry.slug, host, slot], c.get("requests", 0))
                errors.add_metric([snap.entry.slug, host, slot], c.get("upstream_errors", 0))
                for code, n in sorted((c.get("responses") or {}).items()):
                    responses.add_metric([snap.entry.slug, host, slot, code], n)
    yield from (requests, responses, errors)


def exposition(collector: BluegreenCollector) -> bytes:
    """One scrape, in the text format (a private registry: only our metrics, none of the
    client library's process defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
