"""The pure parts of bench/router_price.py: reading wrk's output and the paired ratios the
goal is judged by. No processes."""

from __future__ import annotations

import pytest

from bench.wrk import (
    WrkOutputError,
    WrkRun,
    cpu_ticks,
    cpu_us_per_request,
    parse_wrk,
    price,
    rotated,
)

# wrk 4.1.0 (Debian 12) `wrk -t1 -c16 -d5s --latency`, as printed
WRK_OK = """\
Running 5s test @ http://127.0.0.1:41231/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   637.27us  250.49us   5.63ms   79.38%
    Req/Sec    25.35k     1.27k   27.45k    78.00%
  Latency Distribution
     50%  595.00us
     75%  745.00us
     90%    0.92ms
     99%    1.54ms
  126136 requests in 5.00s, 18.28MB read
Requests/sec:  25224.50
Transfer/sec:      3.66MB
"""

WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:1234/
  1 threads and 16 connections
  Latency Distribution
     50%    2.10ms
     75%    3.00ms
     90%    4.00ms
     99%    1.20s
  3000 requests in 2.00s, 400.00KB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:   1500.00
Transfer/sec:    200.00KB
"""


def run(rps: float, p99: float) -> WrkRun:
    return WrkRun(rps=rps, p50_ms=p99 / 3, p99_ms=p99, requests=int(rps * 5), seconds=5.0,
                  socket_errors=0, non_2xx=0)


def test_parse_wrk_reads_throughput_percentiles_in_ms_and_a_clean_run() -> None:
    got = parse_wrk(WRK_OK)
    assert got.rps == 25224.50 and got.requests == 126136 and got.seconds == 5.0
    assert got.p50_ms == pytest.approx(0.595) and got.p99_ms == pytest.approx(1.54)
    assert got.socket_errors == 0 and got.non_2xx == 0 and got.clean


def test_parse_wrk_counts_socket_errors_and_non_2xx_and_converts_seconds() -> None:
    got = parse_wrk(WRK_ERRORS)
    assert got.p99_ms == pytest.approx(1200.0)
    assert got.socket_errors == 6 and got.non_2xx == 17 and not got.clean


def test_parse_wrk_without_latency_distribution_says_what_is_missing() -> None:
    text = "\n".join(line for line in WRK_OK.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(WrkOutputError, match="50% latency, 99% latency"):
        parse_wrk(text)
    with pytest.raises(WrkOutputError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_price_is_the_median_of_ratios_paired_within_each_round() -> None:
    # the machine got twice as slow in round 2: paired ratios still read 0.9 and 0.8
    pairs = [(run(20000, 1.0), run(18000, 1.1)), (run(10000, 2.0), run(8000, 2.4)),
             (run(15000, 1.5), run(14250, 1.5))]
    p = price("lua", pairs)
    assert p.rps_ratio == pytest.approx(0.9) and p.p99_ratio == pytest.approx(1.1)
    assert p.rps == 14250 and p.p99_ms == 1.5 and p.rounds == 3
    assert not p.within(0.05) and p.within(0.10)
    assert p.cpu_ratio != p.cpu_ratio  # nan: no CPU measured
    with_cpu = price("lua", pairs, [(40.0, 60.0), (45.0, 54.0), (50.0, 70.0)])
    assert with_cpu.cpu_us == 60.0 and with_cpu.cpu_ratio == pytest.approx(1.4)


def test_within_needs_both_throughput_and_p99() -> None:
    fast_but_slow_tail = price("haproxy", [(run(10000, 1.0), run(10000, 1.2))])
    assert not fast_but_slow_tail.within(0.05)
    same = price("haproxy", [(run(10000, 1.0), run(9600, 1.04))])
    assert same.within(0.05)
    with pytest.raises(ValueError, match="no runs of lua"):
        price("lua", [])


def test_rotated_moves_every_mode_through_every_position() -> None:
    modes = ("lua", "reload", "haproxy")
    assert rotated(modes, 0) == ["lua", "reload", "haproxy"]
    assert rotated(modes, 1) == ["reload", "haproxy", "lua"]
    assert rotated(modes, 3) == rotated(modes, 0)
    assert rotated((), 2) == []


def test_cpu_ticks_reads_utime_and_stime_past_a_name_with_spaces_and_parens() -> None:
    # /proc/PID/stat of an nginx worker: field 2 is "(nginx: worker process)"; 14 utime 15 stime
    stat = ("4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 900 0 0 0 "
            "1234 567 0 0 20 0 1 0 98765 11111111 2222 18446744073709551615")
    assert cpu_ticks(stat) == 1234 + 567
    assert cpu_us_per_request(150, 30000) == pytest.approx(50.0)  # 1.5 s of CPU / 30k
    assert cpu_us_per_request(10, 0) != cpu_us_per_request(10, 0)  # nan, no ZeroDivision
