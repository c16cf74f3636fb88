"""History: `fab status` and `fab deploy` with 1,000 history entries vs none.

history.jsonl is filled with 1,000 realistic entries (copies of a real one from this run,
each with its own time, version, commit and build URL) or emptied, alternately, before
each run: N `fab status --json` and N/2 deploys per arm, interleaved. Target: no growth
(a ratio of about 1, at most 1.25).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.rig import Outcome, Rig, fmt_s, fmt_x, main, median, ratio, say, verdict

MAX_RATIO = 1.25
ENTRIES = 1000


def history_entry(template: dict[str, Any], i: int, now: float) -> dict[str, Any]:
    """A realistic history line: a real entry from this run, with its own time and version."""
    entry = json.loads(json.dumps(template))
    entry["at"] = now - 3600.0 * (1000 - i)
    entry["version"] = f"h{i:04d}"
    if entry.get("release"):
        entry["release"] = f"h{i:04d}-{entry['release'].rsplit('-', 1)[-1]}"
    entry["commit"] = f"{i:040x}"
    entry["build_url"] = f"https://jenkins.example.com/job/demo/{i}/"
    entry["who"] = f"jenkins:demo#{i}"
    return entry


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    proj = rig.project("lua", "lua")
    rig.deploy_new(proj)
    lines = proj.history.read_text().splitlines()
    template = next((json.loads(x) for x in reversed(lines)
                     if json.loads(x).get("action") == "deploy"), json.loads(lines[-1]))
    now = time.time()
    full = "".join(json.dumps(history_entry(template, i, now), sort_keys=True) + "\n"
                   for i in range(ENTRIES))

    def set_history(k: int) -> None:
        proj.history.write_text(full if k else "")

    n = args.n
    stat0, stat1, dep0, dep1 = [], [], [], []
    for _ in range(n):
        for k, bucket in ((0, stat0), (ENTRIES, stat1)):
            set_history(k)
            bucket.append(proj.fab("status", "--json").wall)
    nd = max(2, n // 2)
    for _ in range(nd):
        for k, bucket in ((0, dep0), (ENTRIES, dep1)):
            set_history(k)
            bucket.append(rig.deploy_new(proj)[0].wall)
    res: dict[str, Any] = {"entries": ENTRIES, "bytes": len(full), "status0_s": median(stat0),
                           "status1000_s": median(stat1), "deploy0_s": median(dep0),
                           "deploy1000_s": median(dep1), "n_status": n, "n_deploy": nd}
    res["status_ratio"] = ratio(res["status1000_s"], res["status0_s"])
    res["deploy_ratio"] = ratio(res["deploy1000_s"], res["deploy0_s"])
    for what in ("status", "deploy"):
        r = res[f"{what}_ratio"]
        res[f"{what}_ok"] = ok = r <= MAX_RATIO
        say(f"history-{what}: `fab {what}` with {ENTRIES} history entries "
            f"({len(full) / 1e3:.0f} kB) {fmt_s(res[f'{what}1000_s'])} vs 0 entries "
            f"{fmt_s(res[f'{what}0_s'])}: {fmt_x(r)} (median of "
            f"{n if what == 'status' else nd}, interleaved) [target ~1: {verdict(ok)}]")
    ok = res["status_ok"] and res["deploy_ok"]
    line = (f"history: with {ENTRIES} history entries vs none, `fab status` "
            f"{fmt_x(res['status_ratio'])}, `fab deploy` {fmt_x(res['deploy_ratio'])} "
            f"({res['status1000_s']:.2f}s / {res['deploy1000_s']:.2f}s) [target no growth, "
            f"<=x{MAX_RATIO:g}: {verdict(ok)}]")
    return Outcome({"history": res}, line, ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("history", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
