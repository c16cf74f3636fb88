"""Deploy overhead: what `fab deploy` costs beyond shipping bytes and the app's own boot.

N deploys over SSH of fresh small artifacts whose app becomes healthy 1 s after it
starts: overhead = wall - upload phase - the time the app took to become healthy (its
own clock, the health phase's "healthy after"). Every phase's median beside it. Target:
under 1 s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bench.rig import Outcome, Rig, deploy_rows, fmt_s, main, median, median_phases, say, verdict
from testkit.fabout import Phase

MAX_S = 1.0
WARMUP_S = 1.0  # the app answers 503 on /health for this long after it starts


def summarize_deploys(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        vals = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
        return median(vals)
    return {"n": len(rows), "wall_s": med("wall_s"), "overhead_s": med("overhead_s"),
            "overhead_inproc_s": med("overhead_inproc_s"),
            "phases": median_phases([[Phase(k, v, "") for k, v in r["phases"].items()]
                                     for r in rows]),
            "seen_delay_ms": med("seen_delay_ms"), "first_ok_delay_ms": med("first_ok_delay_ms"),
            "probes": med("app_probes"), "probes_per_s": med("probes_per_s"),
            "max_gap_ms": med("max_gap_ms"), "maxrss_mb": med("maxrss_mb")}


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    proj = rig.project("lua", "lua")
    rows = deploy_rows(rig, proj, WARMUP_S, args.deploys)
    d = summarize_deploys(rows)
    d["rows"] = rows
    d["ok"] = ok = d["overhead_s"] < MAX_S
    phases = " ".join(f"{k}={v:.3f}" for k, v in d["phases"].items())
    say(f"deploy-overhead: median {fmt_s(d['overhead_s'])} = wall {fmt_s(d['wall_s'])} - "
        f"upload - health (in-process only: {fmt_s(d['overhead_inproc_s'])}); median "
        f"phases: {phases}")
    line = (f"deploy_overhead: {d['overhead_s']:.2f}s = wall {d['wall_s']:.2f}s - upload - "
            f"the app's own boot (median of {d['n']}; in-process {d['overhead_inproc_s']:.2f}s;"
            f" phases {phases}) [target <1s: {verdict(ok)}]")
    return Outcome({"deploy": d}, line, ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("deploy_overhead", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
