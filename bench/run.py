"""`make bench`: every benchmark, one after the other, each printing its own result line.

Each benchmark runs its baseline side by side in the same run (the classic shell-script
pattern for zero downtime; bare ssh / scp for speed), so the ratios hold on whatever
machine this runs on. Results land in .run/bench/*.json. Exit status: non-zero if any
benchmark missed its goal.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".run" / "bench"
BENCHMARKS = [
    ("zero_downtime", [str(REPO / "bench" / "zero_downtime.py")]),
    ("speed", [str(REPO / "bench" / "speed.py")]),
]


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
    return (f"{platform.platform()}, {cpu}, {len(__import__('os').sched_getaffinity(0))} "
            f"cores, {nginx.stderr.strip()}, Python {platform.python_version()}")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    quick = "--quick" in sys.argv[1:]
    print(f"machine: {machine()}", flush=True)
    results: list[tuple[str, int, str]] = []
    for name, argv in BENCHMARKS:
        cmd = [sys.executable, *argv, "--json", str(OUT / f"{name}.json")]
        if quick:
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
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
