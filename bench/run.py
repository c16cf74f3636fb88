"""`make bench`: every benchmark, one after the other, each printing its own result line.

Each benchmark runs its baseline side by side in the same run (the classic shell-script
pattern for zero downtime; bare python / fab / ssh / scp for the speed measurements), so
the ratios hold on whatever machine this runs on. Results land in .run/bench/NAME.json.
At the end: every benchmark's result line, then the speed measurements in one line.
Exit status: non-zero if any benchmark missed its goal.

    .venv/bin/python -m bench.run [--quick] [--only startup,switch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import summary_line, targets
from bench.rig import verdict
from testkit import REPO

OUT = REPO / ".run" / "bench"
BENCHMARKS = ("zero_downtime", "router_price", "revert", "startup", "switch", "deploy_overhead",
              "health", "upload", "history", "memory", "ssh_exec", "fleet")
# what is not a speed measurement of the tool itself: not in the combined speed line
NOT_SPEED = ("zero_downtime", "router_price", "revert")


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (f"{platform.platform()}, {cpu}, {len(os.sched_getaffinity(0))} "
            f"cores, {nginx.stderr.strip()}, Python {platform.python_version()}")


def speed_results(names: Sequence[str]) -> dict[str, Any]:
    """The "result" dicts of the speed measurements that ran, merged."""
    merged: dict[str, Any] = {}
    for name in names:
        try:
            merged.update(json.loads((OUT / f"{name}.json").read_text()).get("result") or {})
        except (OSError, ValueError):
            continue
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions in every benchmark")
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(BENCHMARKS)}")
    args = ap.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = [n for n in BENCHMARKS if not only or n in only]
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    results: list[tuple[str, int, str]] = []
    for name in names:
        (OUT / f"{name}.json").unlink(missing_ok=True)  # never report a previous run's numbers
        cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(OUT / f"{name}.json")]
        if args.quick:
            cmd.append("--quick")
        print(f"\n### {name}: {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, check=False, stdout=subprocess.PIPE, text=True)
        print(proc.stdout, end="", flush=True)
        last = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), "")
        results.append((name, proc.returncode, last))
        print(f"### {name}: exit {proc.returncode} after {time.monotonic() - started:.0f}s")
    print("\n== results")
    for name, rc, line in results:
        print(f"{'ok ' if rc == 0 else 'MISSED'} {line or name}")
    speed = speed_results([n for n in names if n not in NOT_SPEED])
    if speed:
        print(summary_line(speed))
        print("speed targets: " + " ".join(f"{k}={verdict(v)}"
                                           for k, v in targets(speed).items()))
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
