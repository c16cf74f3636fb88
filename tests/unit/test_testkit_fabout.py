"""testkit.fabout, the one parser of what `fab` prints: phase lines, the summary line, and
the same lines read live with timestamps. No processes."""

from __future__ import annotations

import pytest

from testkit import fabout

DEPLOY_OUT = """\
--> inspect   /tmp/dist/demo-v2.tar.gz
<-- inspect   ok 0.000s  2694 bytes sha256 98b8316dea57
--> lock      on 127.0.0.1
<-- lock      ok 0.167s
--> state
<-- state     ok 0.014s
=== deploy demo v2 -> green (port 58261), live now: blue; 1 app host(s), 1 traffic host(s)
--> upload    demo-v2.tar.gz to 1 host(s)
<-- upload    ok 0.455s  2694 bytes sent
--> stop      drain and stop slot green (port 58261)
<-- stop      ok 0.345s  none
--> start     v2-98b8316dea57 in slot green
<-- start     ok 0.262s
--> health    GET /health on port 58261
<-- health    ok 1.136s  healthy after 1.135s
--> switch    nginx -> green (port 58261) on 1 traffic host(s)
<-- switch    ok 0.265s
--> unlock
<-- unlock    ok 0.002s
=== deployed demo v2: live slot green in 2.65s; blue slot kept warm for `fab switch`
"""


def test_parse_phases_reads_every_phase_line_in_order() -> None:
    phases = fabout.parse_phases(DEPLOY_OUT)
    assert [p.name for p in phases] == ["inspect", "lock", "state", "upload", "stop", "start",
                                        "health", "switch", "unlock"]
    assert phases[3].seconds == pytest.approx(0.455)
    assert phases[3].note == "2694 bytes sent"
    assert all(p.ok for p in phases)


def test_failed_phase_and_repeated_phases() -> None:
    out = ("<-- stop      ok 0.100s  stopped\n"
           "<-- health    FAILED after 10.431s\n"
           "<-- stop      ok 0.200s  stopped\n")
    phases = fabout.parse_phases(out)
    assert [(p.name, p.ok) for p in phases] == [("stop", True), ("health", False),
                                                ("stop", True)]
    assert fabout.phase_totals(phases)["stop"] == pytest.approx(0.3)


def test_totals_target_slot_bytes_and_health() -> None:
    phases = fabout.parse_phases(DEPLOY_OUT)
    assert fabout.parse_total(DEPLOY_OUT) == pytest.approx(2.65)
    assert fabout.parse_total("=== demo: live slot blue (v1) in 0.43s\n") == pytest.approx(0.43)
    assert fabout.parse_total("no summary\n") is None
    assert fabout.parse_target_slot(DEPLOY_OUT) == "green"
    assert fabout.uploaded_bytes(phases) == 2694
    assert fabout.uploaded_bytes(fabout.parse_phases(
        "<-- upload    ok 0.1s  0 bytes sent (already on every host)\n")) == 0
    assert fabout.healthy_after(phases) == pytest.approx(1.135)
    assert fabout.reported_probes(phases) is None
    assert fabout.reported_probes(fabout.parse_phases(
        "<-- health    ok 1.1s  healthy after 1.100s (12 probes)\n")) == 12


def test_phase_reader_stamps_phases_with_the_readers_clock() -> None:
    reader = fabout.PhaseReader()
    lines = ["--> stop      drain and stop slot green (port 58261)",
             "something in between",
             "<-- stop      ok 0.345s  none",
             "--> health    GET /health on port 58261",
             "<-- switch    ok 0.1s",  # never started: ignored
             "<-- health    FAILED after 10.431s"]
    for now, line in enumerate(lines, start=100):
        reader.feed(line, float(now))
    stop, health = reader.phases
    assert (stop.name, stop.detail, stop.start, stop.end) == (
        "stop", "drain and stop slot green (port 58261)", 100.0, 102.0)
    assert stop.ok and stop.seconds == pytest.approx(0.345) and stop.note == "none"
    assert (health.start, health.end, health.ok) == (103.0, 105.0, False)
    assert health.seconds == pytest.approx(10.431)
    unfinished = fabout.PhaseReader()
    unfinished.feed("--> upload    demo.tar.gz to 1 host(s)", 1.0)
    assert [(p.name, p.ok, p.end) for p in unfinished.phases] == [("upload", False, 0.0)]


FLEET_OUT = """\
--> upload    demo.tar.gz to 16 host(s)
<-- upload    16/16 ok 0.420s (slowest app07 0.418s)  2694 bytes sent
--> health    GET /health on port 8082
    app03: FAILED after 10.01s: port 8082 did not become healthy within 10s
<-- health    15/16 FAILED after 10.012s (slowest app03 10.010s)
"""


def test_phase_lines_of_a_fleet_carry_host_counts_and_the_slowest_host() -> None:
    up, health = fabout.parse_phases(FLEET_OUT)
    assert (up.name, up.ok, up.hosts_ok, up.hosts, up.slowest) == ("upload", True, 16, 16,
                                                                   "app07")
    assert up.seconds == pytest.approx(0.42) and up.slowest_s == pytest.approx(0.418)
    assert up.note == "2694 bytes sent" and fabout.uploaded_bytes([up]) == 2694
    assert (health.ok, health.hosts_ok, health.hosts, health.slowest) == (False, 15, 16,
                                                                          "app03")
    reader = fabout.PhaseReader()
    for i, line in enumerate(FLEET_OUT.splitlines()):
        reader.feed(line, float(i))
    assert [(p.name, p.hosts_ok, p.slowest) for p in reader.phases] == [
        ("upload", 16, "app07"), ("health", 15, "app03")]
    # one host keeps the plain form, with no counts
    (one,) = fabout.parse_phases("<-- lock      ok 0.010s\n")
    assert one.hosts is None and one.slowest == ""
