"""/metrics, parsed with prometheus_client's own text parser, checked value by value
against the recorded history and state fixtures."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bluegreen.automation.jobqueue import JobRequest
from tests.unit.web.conftest import FIXTURES, World, fixture_history, make_world

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(world: World) -> tuple[Samples, dict[str, str]]:
    status, headers, body = world.call("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_counters_match_the_recorded_history(world: World) -> None:
    world.record(lock=True)
    samples, types = scrape(world)
    history = fixture_history()
    expected = Counter((e["action"], e["result"]) for e in history)
    assert expected == {("deploy", "ok"): 3, ("deploy", "failed"): 1,
                        ("deploy", "auto-reverted"): 1, ("switch", "ok"): 1,
                        ("rollback", "ok"): 1, ("unlock", "ok"): 1}
    assert types["bluegreen_operations"] == "counter"
    got = {(dict(labels)["action"], dict(labels)["result"]): v
           for labels, v in named(samples, "bluegreen_operations_total").items()}
    assert got == expected
    assert all(dict(labels)["app"] == "demo"
               for labels in named(samples, "bluegreen_operations_total"))

    # the histogram: successful operations only, by action
    assert types["bluegreen_operation_duration_seconds"] == "histogram"
    ok = [e for e in history if e["result"] == "ok" and "seconds" in e]
    for action in ("deploy", "switch", "rollback"):
        mine = [e["seconds"] for e in ok if e["action"] == action]
        assert value(samples, "bluegreen_operation_duration_seconds_count", app="demo",
                     action=action) == len(mine)
        assert value(samples, "bluegreen_operation_duration_seconds_sum", app="demo",
                     action=action) == pytest.approx(sum(mine))
        for le in ("0.5", "1.0", "2.0", "5.0", "+Inf"):
            bound = float("inf") if le == "+Inf" else float(le)
            assert value(samples, "bluegreen_operation_duration_seconds_bucket", app="demo",
                         action=action, le=le) == sum(1 for s in mine if s <= bound)
    assert ("bluegreen_operation_duration_seconds_count",
            frozenset({("app", "demo"), ("action", "unlock")})) not in samples

    measured = [e["failed_requests"] for e in history if "failed_requests" in e]
    assert measured == [0, 2, 37]
    assert value(samples, "bluegreen_switch_failed_requests_total", app="demo") == 39
    assert value(samples, "bluegreen_switch_measurements_total", app="demo") == 3
    assert value(samples, "bluegreen_auto_reverts_total", app="demo") == 1


def test_state_gauges_match_the_recorded_state_and_lock(world: World) -> None:
    world.record(lock=True)
    samples, _ = scrape(world)
    state = json.loads((FIXTURES / "state.json").read_text())
    assert named(samples, "bluegreen_live_info") == {frozenset({
        ("app", "demo"), ("host", "local"), ("slot", state["live"]),
        ("version", state["slots"][state["live"]]["version"])}): 1.0}
    assert value(samples, "bluegreen_lock_held", app="demo") == 1
    # nothing runs on this machine for the fixture: both slots down, status unhealthy (4)
    # or inconsistent (5: no router file) - views.status decides, the gauge repeats it
    for slot in ("blue", "green"):
        assert value(samples, "bluegreen_slot_healthy", app="demo", host="local",
                     slot=slot) == 0
        assert value(samples, "bluegreen_slot_running", app="demo", host="local",
                     slot=slot) == 0
    assert value(samples, "bluegreen_status_code", app="demo") == 5
    assert value(samples, "bluegreen_state_read_ok", app="demo") == 1


def test_fleet_gauges_leave_unknown_hosts_out_and_count_router_requests(world: World) -> None:
    world.record()
    recorded = json.loads((FIXTURES / "status-fleet.json").read_text())
    world.status_fn = lambda cfg, fleet: recorded
    world.counters_fn = lambda cfg, fleet: {"lb1": {
        "blue": {"requests": 120, "responses": {"2xx": 118, "5xx": 2}, "upstream_errors": 1},
        "green": {"requests": 980, "responses": {"2xx": 980}, "upstream_errors": 0}}}
    samples, _ = scrape(world)
    healthy = {(dict(k)["host"], dict(k)["slot"]): v
               for k, v in named(samples, "bluegreen_slot_healthy").items()}
    assert healthy == {("app1", "blue"): 1, ("app1", "green"): 1,
                       ("app2", "blue"): 0, ("app2", "green"): 0}  # app3: unknown, absent
    live = {dict(k)["host"]: (dict(k)["slot"], dict(k)["version"])
            for k in named(samples, "bluegreen_live_info")}
    assert live == {"app1": ("green", "42"), "app2": ("green", "42"), "app3": ("green", "42")}
    assert value(samples, "bluegreen_status_code", app="demo") == 5
    assert value(samples, "bluegreen_router_requests_total", app="demo", host="lb1",
                 slot="blue") == 120
    assert value(samples, "bluegreen_router_responses_total", app="demo", host="lb1",
                 slot="blue", code="5xx") == 2
    assert value(samples, "bluegreen_router_upstream_errors_total", app="demo", host="lb1",
                 slot="blue") == 1


def test_jobs_gauge_counts_the_queue(world: World) -> None:
    world.record()
    for i, delivery in enumerate(("a", "b", "c")):
        world.queue.submit("github", delivery, [JobRequest(
            lane=f"demo/env{i}", app="demo", environment=f"env{i}", rule="demo-main",
            action="build", provider="github", event={})])
    job = world.queue.claim_next("demo/env0")
    assert job is not None
    world.queue.finish(job.id, "succeeded", "ok")
    assert world.queue.claim_next("demo/env1") is not None
    samples, _ = scrape(world)
    jobs = {dict(k)["state"]: v for k, v in named(samples, "bluegreen_jobs").items()}
    assert jobs == {"pending": 1, "running": 1, "succeeded": 1, "failed": 0,
                    "interrupted": 0, "superseded": 0, "skipped": 0}


def test_counters_only_grow_and_a_restarted_service_counts_the_same(world: World) -> None:
    world.record()
    before, _ = scrape(world)
    world.append_history({"at": 1.0, "action": "switch", "result": "ok", "seconds": 0.3,
                          "failed_requests": 4})
    world.refresh()
    after, _ = scrape(world)
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_count", "_bucket", "_sum")):
            assert after[(name, labels)] >= v, name
    assert value(after, "bluegreen_switch_failed_requests_total", app="demo") == 43
    assert value(after, "bluegreen_operations_total", app="demo", action="switch",
                 result="ok") == 2
    restarted = make_world(world.root)  # a new service process: reads history from zero
    again, _ = scrape(restarted)
    assert {k: v for k, v in again.items() if k[0].endswith("_total")} == \
        {k: v for k, v in after.items() if k[0].endswith("_total")}


def test_no_measurement_recorded_means_zero_failed_requests(world: World) -> None:
    world.app_root.mkdir(parents=True)
    (world.app_root / "history.jsonl").write_text(
        '{"action": "deploy", "result": "ok", "seconds": 2.5}\n')
    samples, _ = scrape(world)
    assert value(samples, "bluegreen_switch_failed_requests_total", app="demo") == 0
    assert value(samples, "bluegreen_switch_measurements_total", app="demo") == 0
    assert value(samples, "bluegreen_operations_total", app="demo", action="deploy",
                 result="ok") == 1


def test_an_unreadable_app_says_so_and_keeps_its_counters(world: World) -> None:
    world.record()
    scrape(world)
    calls: dict[str, Any] = {}

    def down(cfg: Any, fleet: Any) -> dict[str, Any]:
        from bluegreen.errors import BluegreenError

        calls["n"] = calls.get("n", 0) + 1
        raise BluegreenError("cannot connect to app1:22")

    for reader in world.web.readers.values():
        reader.status_fn = down
    world.refresh()
    samples, _ = scrape(world)
    assert calls["n"] >= 1
    assert value(samples, "bluegreen_state_read_ok", app="demo") == 0
    assert ("bluegreen_lock_held", frozenset({("app", "demo")})) not in samples
    assert value(samples, "bluegreen_operations_total", app="demo", action="deploy",
                 result="ok") == 3
