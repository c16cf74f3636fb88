"""The pure parts of the speed benchmarks: the app's probe log, the counting app, history
entries, and the arithmetic and summary the speed targets are judged by. No processes, no
network. (fab's phase lines are read by testkit.fabout: tests/unit/test_testkit_fabout.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import countapp, history, report, rig


def test_overhead_ratio_median() -> None:
    assert rig.deploy_overhead(2.65, 0.455, 1.135) == pytest.approx(1.06)
    assert rig.ratio(0.9, 0.3) == pytest.approx(3.0)
    assert rig.ratio(1.0, 0.0) != rig.ratio(1.0, 0.0)  # nan, never a ZeroDivisionError
    assert rig.median([3.0, 1.0, 2.0]) == 2.0
    assert rig.median([]) != rig.median([])


def _log(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def test_app_log_timeline_counts_direct_probes_until_the_streak() -> None:
    text = _log([
        "bench-start 100.000000 101.000000",
        "demo v1 listening on ('127.0.0.1', 8081)",
        "bench-req 100.100000 /health 503 -",
        "bench-req 100.200000 /health 503 -",
        "bench-req 100.400000 /health 503 -",
        "bench-req 100.500000 / 200 127.0.0.1",          # through nginx: not a probe
        "bench-req 100.900000 /health 503 -",
        "bench-req 101.050000 /health 200 -",            # first 200, 50 ms after ready
        "bench-req 101.070000 /health 200 -",            # streak of 2: seen at +70 ms
        "bench-req 101.200000 /health 200 127.0.0.1",    # post-switch verify via nginx
        "bench-req 105.000000 /health 200 -",            # a later `fab status`
    ])
    tl = countapp.parse_app_log(text)
    assert tl is not None
    assert tl.probes == 6
    assert tl.probes_before_ready == 4
    assert tl.first_ok_delay == pytest.approx(0.05)
    assert tl.seen_delay == pytest.approx(0.07)
    assert tl.max_gap == pytest.approx(0.5)
    assert tl.warmup_rate == pytest.approx(4.0)


def test_app_log_streak_resets_on_a_failure_and_missing_start() -> None:
    text = _log([
        "bench-start 10.0 10.5",
        "bench-req 10.6 /health 200 -",
        "bench-req 10.7 /health 503 -",
        "bench-req 10.8 /health 200 -",
        "bench-req 10.9 /health 200 -",
    ])
    tl = countapp.parse_app_log(text, successes=2)
    assert tl is not None
    assert tl.probes == 4
    assert tl.first_ok_delay == pytest.approx(0.1)
    assert tl.seen_delay == pytest.approx(0.4)
    assert countapp.parse_app_log("bench-req 1.0 /health 200 -\n") is None
    never = countapp.parse_app_log(_log(["bench-start 1.0 2.0", "bench-req 1.5 /health 503 -"]))
    assert never is not None and never.seen is None and never.seen_delay is None


def test_history_entry_is_realistic_and_distinct() -> None:
    template = {"action": "deploy", "result": "ok", "version": "v2", "release": "v2-98b8316dea57",
                "at": 1.0, "phases": {"upload": 0.4}, "who": "me"}
    a, b = history.history_entry(template, 1, 1e9), history.history_entry(template, 2, 1e9)
    assert a["release"] == "h0001-98b8316dea57" and b["version"] == "h0002"
    assert a["at"] < b["at"] < 1e9
    assert template["version"] == "v2"  # the template is not modified
    assert 150 < len(json.dumps(a)) < 4096  # one line of the size the tool writes


def test_summary_line_has_every_field_even_when_parts_did_not_run() -> None:
    line = report.summary_line({})
    assert line.startswith("speed: switch=n/a")
    for key in ("rollback=", "deploy_overhead=", "health_detect=", "upload_ratio=",
                "history_ratio=", "maxrss="):
        assert key in line
    full = report.summary_line({
        "switch": {"lua": {"switch_s": 0.71, "floor_s": 0.3, "switch_x": 2.37,
                           "rollback_s": 0.8, "rollback_x": 2.67},
                   "reload": {"switch_s": 0.75, "switch_x": 2.5}},
        "deploy": {"overhead_s": 0.9}, "health": {"seen_delay_ms": 70.0},
        "upload": {"ratio": 0.85, "redeploy_bytes": 0},
        "history": {"status_ratio": 1.01, "deploy_ratio": 0.99},
        "memory": {"small_mb": 47.0, "big_mb": 48.0}})
    assert "switch=0.71s (floor 0.30s, x2.4)" in full
    assert "upload_ratio=0.85" in full and "redeploy_bytes=0" in full
    assert "history_ratio=1.01/0.99" in full and "maxrss=47/48MB" in full


def test_count_app_and_artifact(tmp_path: Path) -> None:
    import tarfile

    art = countapp.build_artifact(tmp_path, "t1")
    again = countapp.build_artifact(tmp_path / "again", "t1")
    assert art.read_bytes() == again.read_bytes()  # reproducible: same checksum
    with tarfile.open(art) as tar:
        assert {"app.py", "count_app.py", "bin/runner", "VERSION"} <= set(tar.getnames())
    big = countapp.build_artifact(tmp_path, "t2", blob_bytes=3 << 20)
    assert big.name.endswith(".tar") and big.stat().st_size > 3 << 20
    with tarfile.open(big) as tar:
        assert tar.getmember("blob.bin").size == 3 << 20
    compile(countapp.COUNT_APP, "count_app.py", "exec")


def test_targets_reports_met_missed_and_not_measured() -> None:
    t = report.targets({"switch": {"lua": {"switch_ok": True, "rollback_ok": False}},
                       "deploy": {"ok": True}, "history": {"status_ok": True}})
    assert t["switch[lua]"] is True and t["rollback[lua]"] is False
    assert t["switch[reload]"] is None and t["deploy_overhead"] is True
    assert t["history"] is None  # deploy half not measured
    assert t["upload_vs_scp"] is None
