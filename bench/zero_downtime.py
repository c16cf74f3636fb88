"""Zero failed requests, through the REAL tool: `fab deploy/switch/rollback` under load.

Issue 3's benchmark. The run itself is testkit/underload.py (also behind the short check
in `make test`, tests/integration/test_zero_downtime.py): a private nginx, a project the
way a user has one (host `local`, the chosen `nginx.mode`, `drain_timeout = 30`,
`[env] GRACEFUL = "0"` so the demo app dies at once on SIGTERM), testkit.loadgen sending
all four classes at once (keep-alive GET, keep-alive POST, fresh-connection GET, 1.5 s
requests), then N operations IN A ROW, each one a `fab` subprocess: back-to-back deploys
(each replaces the slot that was live moments ago and may still hold long requests),
switches, rollbacks (warm, and cold after a refused deploy) and a deploy of an unhealthy
build that must be refused without touching traffic.

The same run again with `traffic.router = "haproxy"` (a private haproxy 2.6 in front of
the slots instead of nginx, switched through its admin socket), then two classes whose
bluegreen.toml sets no `nginx.mode` at all, so `auto` decides (this nginx loads the lua
module, so it must choose lua: printed, and a failure if not): `default`, and
`include-tls`, the include-only integration inside a user's own TLS server block (a
self-signed certificate made by openssl for the run) with the load client on https. Then,
in the same run, the same load against the classic shell-script pattern
(bench/classic_bench.py, same number of operations), and our failures against its failures.

CLI::

    .venv/bin/python -m bench.zero_downtime        # lua reload haproxy default include-tls classic
    .venv/bin/python -m bench.zero_downtime --mode include-tls --no-classic
    .venv/bin/python -m bench.zero_downtime --mode lua --ops 20 --json out.json
    .venv/bin/python -m bench.zero_downtime --mode haproxy --no-classic
    .venv/bin/python -m bench.zero_downtime --quick         # 8 ops, short (CI)

The last line is the result line::

    zero_downtime: ops=24 requests=N failed=0 (classic: failed=M of K) ratio=R
        p99_switch=..ms p99_steady=..ms

ratio = our failure rate / classic's failure rate (0 is the goal). One such line per class,
side by side (`zero_downtime[reload]:`, `zero_downtime[haproxy]:`, `zero_downtime[default]:
... auto_chose=lua`, `zero_downtime[include-tls]:`, then lua's as the last line), each with
its failures per load class. Exit status: 1 if any class but explicit reload had a failed
request or an operation whose result was not the expected one, or auto chose anything but
lua (reload mode is reported, never fails the run: it is known to drop a few keep-alive
requests per reload on nginx < 1.27.4), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.classic_bench import run_classic
from testkit import REPO
from testkit.loadgen import LoadResult
from testkit.underload import AUTO_MODES, MAX_OPS, MODES, ModeRun, report, run_bluegreen

# the classes that promise zero failed requests: any failure in them fails the benchmark
ZERO_MODES = ("lua", "haproxy", *AUTO_MODES)
# `all`: every class, in this order (lua's line is printed last, as the result line)
ALL_MODES = ["lua", "reload", "haproxy", *AUTO_MODES]


def mode_line(run: ModeRun, classic: LoadResult | None) -> str:
    """`zero_downtime[: | [reload]:] ops= requests= failed= (classic: ...) ratio= p99...`"""
    a = run.analysis
    res = run.result
    label = "zero_downtime" if run.mode == "lua" else f"zero_downtime[{run.mode}]"
    parts = [f"{label}: ops={len(run.ops)} requests={res.total} failed={res.failed}"]
    if run.mode in AUTO_MODES:
        parts.append(f"auto_chose={run.chosen_mode}")
    parts.append("[" + " ".join(f"{cls}={st.failures}/{st.requests}"
                                for cls, st in res.per_class().items()) + "]")
    if classic is not None:
        parts.append(f"(classic: failed={classic.failed} of {classic.total})")
        ours = res.failed / res.total if res.total else 0.0
        theirs = classic.failed / classic.total if classic.total else 0.0
        parts.append(f"ratio={ours / theirs:.3f}" if theirs else "ratio=n/a")
    parts.append(f"p99_switch={a['latency_ms']['switch']['p99']:.1f}ms")
    parts.append(f"p99_steady={a['latency_ms']['steady']['p99']:.1f}ms")
    if not run.ops_as_expected:
        parts.append("ops=UNEXPECTED")
    return " ".join(parts)


def machine() -> dict[str, str]:
    """Where it ran, for the README's results table."""
    info = {"python": platform.python_version(), "kernel": platform.release(),
            "cpus": str(os.cpu_count())}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for key, argv in (("nginx", ["nginx", "-v"]),
                      ("lua_module", ["dpkg-query", "-W", "-f=${Version}",
                                      "libnginx-mod-http-lua"]),
                      ("haproxy", ["dpkg-query", "-W", "-f=${Version}", "haproxy"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            info[key] = (out.stdout + out.stderr).strip().removeprefix("nginx version: ")
        except OSError:
            info[key] = "?"
    return info


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=None,
                        help=f"operations per run (default 24, --quick 8; max {MAX_OPS})")
    parser.add_argument("--mode", choices=(*MODES, "both", "all"), default="all",
                        help="bluegreen mode(s) to run: lua, reload (nginx.mode), haproxy "
                             "(traffic.router), both (lua and reload) or all (default); lua "
                             "and haproxy decide the exit status")
    parser.add_argument("--quick", action="store_true",
                        help="short run for CI: 8 operations, short warmup and cooldown")
    parser.add_argument("--no-classic", action="store_true",
                        help="skip the classic shell-script baseline")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="pause between operations (default 0: in a row)")
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--slow-seconds", type=float, default=1.5,
                        help="length of the long requests (default 1.5)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="nginx.drain_timeout (default 30; 0 is the negative control: "
                             "slots are stopped with long requests in flight)")
    parser.add_argument("--json", help="write every number (no per-request records) here")
    args = parser.parse_args(argv)
    ops = args.ops if args.ops is not None else (8 if args.quick else 24)
    ops = max(1, min(ops, MAX_OPS))
    warm = 1.5 if args.quick else 3.0
    modes = {"both": ["lua", "reload"], "all": ALL_MODES}.get(args.mode, [args.mode])
    root = REPO / ".run" / "bench" / f"zero-downtime-{int(time.time())}"
    t0 = time.monotonic()
    runs: dict[str, ModeRun] = {}
    try:
        for mode in modes:
            runs[mode] = run_bluegreen(mode, ops=ops, workdir=root / mode, warmup=warm,
                                       cooldown=warm, interval=args.interval,
                                       nginx_workers=args.nginx_workers,
                                       drain_timeout=args.drain_timeout,
                                       slow_seconds=args.slow_seconds)
            print(report(runs[mode]), flush=True)
        classic: LoadResult | None = None
        if not args.no_classic:
            print(f"[classic] {ops} classic deploys (bench/classic/deploy.sh) under the same "
                  "load", flush=True)
            classic = run_classic(ops, workdir=root / "classic", warmup=warm,
                                  nginx_workers=args.nginx_workers,
                                  slow_seconds=args.slow_seconds)
            print("=== classic shell-script pattern (kill -15, nohup, curl loop, tee, "
                  "nginx -s reload)")
            print(classic.summary(), flush=True)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"zero_downtime: setup error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - t0
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "elapsed_s": round(elapsed, 1),
            "runs": {m: r.to_dict() for m, r in runs.items()},
            "classic": classic.to_dict() if classic is not None else None,
        }, indent=1, default=str))
    print(f"(total {elapsed:.0f}s; work dirs under {root})")
    for mode in [m for m in modes if m != "lua"] + [m for m in modes if m == "lua"]:
        print(mode_line(runs[mode], classic), flush=True)  # the lua line comes last
    # this nginx loads the lua module: a config that sets no mode must get lua mode
    wrong = [m for m in AUTO_MODES if m in runs and runs[m].chosen_mode != "lua"]
    for m in wrong:
        print(f"zero_downtime[{m}]: auto chose {runs[m].chosen_mode}, not lua, although this "
              "nginx loads ngx_http_lua_module: see bluegreen/routers/__init__.py choose_mode")
    if wrong or any(run.failed or not run.ops_as_expected
                    for mode, run in runs.items() if mode in ZERO_MODES):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
