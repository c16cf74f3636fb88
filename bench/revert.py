"""How fast the watch takes traffic off a bad release, and what users lose meanwhile.

A private nginx with the lua module, the demo app v1 live, keep-alive and fresh-connection
GETs from testkit.loadgen recording every request, then a deploy of a LYING build: its
/health answers 200, every real page 500 (the first lying build of issue 10). The watch
window sees the 500s through nginx's own per-slot counters and reverts. Two ways in:

  switch   `fab deploy` switches whole; the watch reverts to the warm slot (blue)
  canary   `fab deploy --canary 10,100`: the gate of the 10 % step reverts to 0 %

Per run, on one clock (fab's lines stamped as they arrive, the load client's records):

  moved     breach detected -> every new request goes to the good slot, as fab measures it
            in-process (its `users on blue N ms after the breach` line); goal < 1 s
  client    the same seen by the load client: the last request still sent to the lying
            slot, minus the moment the `<-- watch FAILED` line reached us (negative: users
            were moved before fab's line arrived through the pipe)
  fab       the whole revert phase as fab timed it (the move, then the file: install,
            `nginx -t`, flip, verify through the front door)
  failed    requests that failed for any other reason than the lying build's own 500s
            (a reset, a 502, a timeout: what the revert itself could break); goal 0
  bad       the lying build's answers to requests sent after the breach was detected:
            what the time to revert costs users (reported, no goal of its own)

    .venv/bin/python -m bench.revert [--quick] [--runs N] [--json out.json]

The last line is the result line; exit 1 when a goal was missed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from testkit.demo import build_artifacts
from testkit.fabout import PhaseReader
from testkit.loadgen import ClassConfig, LoadGen, LoadResult
from testkit.lying import build_lying
from testkit.nginx import PrivateNginx
from testkit.project import Project

GOAL_SECONDS = 1.0
def one_run(project: Project, how: str) -> dict[str, Any]:
    """v1 live, load on, a lying deploy; what the revert took and what users lost."""
    project.deploy("v1")
    mix = {"ka_get": ClassConfig(workers=3, pause=0.0),
           "fresh_get": ClassConfig(workers=1, pause=0.005)}
    reader = PhaseReader()
    extra = ["--canary", "10,100", "--step", "20"] if how == "canary" else []
    gen = LoadGen(project.nginx.url("/"), mix=mix, label=how, max_duration=120).start()
    try:
        gen.wait(1.0)
        proc = project.fab("deploy", "--artifact", str(project.artifacts["lying"]),
                           "--version", f"lying-{how}", "--force", *extra, check=False,
                           on_line=lambda line, now: reader.feed(line, now), timeout=120)
        gen.wait(1.0)
    finally:
        result: LoadResult = gen.stop()
    watch = next((p for p in reader.phases if p.name == "watch" and not p.ok), None)
    revert = next((p for p in reader.phases if p.name == "revert"), None)
    if proc.returncode == 0 or watch is None or revert is None or not revert.ok:
        raise RuntimeError(f"the lying build was not reverted ({how}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    detected = watch.end
    moved = re.search(r"users on \w+ (\d+) ms after the breach", proc.stdout)
    if moved is None:
        raise RuntimeError(f"fab did not say when users were moved ({how}):\n{proc.stdout}")
    lied = [r for r in result.records if r.version == "lying"]
    last_lying_sent = max((r.start for r in lied), default=detected)
    after = [r for r in result.records if r.start >= detected]
    other = [r for r in result.records if not r.ok and r.version != "lying"]
    return {
        "how": how,
        "moved_s": int(moved[1]) / 1000,
        "client_s": round(last_lying_sent - detected, 3),
        "fab_revert_s": revert.seconds,
        "watch_s": watch.seconds,
        "requests": result.total,
        "lying_answers": len(lied),
        "bad_after_detection": sum(r.version == "lying" for r in after),
        "failed_not_lying": len(other),
        "failure_kinds": dict(result.failure_kinds()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run of each way")
    ap.add_argument("--runs", type=int, default=0, help="runs of each way (default 3)")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-revert-") as tmp:
        work = Path(tmp)
        artifacts = build_artifacts(work / "dist", ("v1",))
        artifacts["lying"] = build_lying(work / "dist", crash=False)
        for how in ("switch", "canary"):
            for i in range(runs):
                nginx = PrivateNginx(work / f"nginx-{how}-{i}", lua=True, worker_processes=2,
                                     main_extra=("worker_shutdown_timeout 60s;",))
                nginx.start()
                project = Project(work / f"app-{how}-{i}", nginx, artifacts, mode="lua",
                                  watch_toml="seconds = 20\ninterval = 0.1\n"
                                             "min_requests = 20\nmax_error_rate = 0.05")
                project.write()
                try:
                    row = one_run(project, how)
                finally:
                    project.stop_everything()
                    nginx.stop()
                rows.append(row)
                print(f"{how} #{i + 1}: breach -> users moved {row['moved_s'] * 1000:.0f} ms "
                      f"(client: {row['client_s'] * 1000:+.0f} ms; fab's whole revert phase "
                      f"{row['fab_revert_s'] * 1000:.0f} ms; watch "
                      f"{row['watch_s']:.2f} s); {row['lying_answers']} bad answers of "
                      f"{row['requests']} ({row['bad_after_detection']} sent after "
                      f"detection); other failures {row['failed_not_lying']} "
                      f"{row['failure_kinds']}", flush=True)
    worst = max(max(r["moved_s"], r["client_s"]) for r in rows)
    median = statistics.median(r["moved_s"] for r in rows)
    lost = sum(r["failed_not_lying"] for r in rows)
    bad_after = sum(r["bad_after_detection"] for r in rows)
    met = worst < GOAL_SECONDS and lost == 0
    if args.json:
        Path(args.json).write_text(json.dumps({"revert": {
            "runs": rows, "median_s": median, "worst_s": worst, "failed": lost,
            "bad_after_detection": bad_after,
            "goal_s": GOAL_SECONDS, "met": met}}, indent=2))
    print(f"revert: breach->users moved median {median * 1000:.0f} ms worst "
          f"{worst * 1000:.0f} ms (fab or client, whichever is later) "
          f"(goal < {GOAL_SECONDS * 1000:.0f} ms) failed={lost} (goal 0; not counting the "
          f"lying build's own 500s, {bad_after} of them after detection) runs={len(rows)} "
          f"{'MET' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
