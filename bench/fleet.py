"""Fleet: deploy and switch on 1, 4 and 16 hosts in one run, SSH cost per host, flip skew,
and zero failed requests through two traffic hosts during deploys to sixteen.

One fleet (testkit/fleet.py): 16 app hosts and 2 lua traffic hosts, each a network
namespace with its own sshd, reached as the non-root deploy user with only the nginx sudo
rules. Three projects share it: demo1 on app01, demo4 on app01-04, demo16 on all sixteen,
each behind both traffic hosts. Deploys and switches of the three sizes are interleaved;
the one-host numbers are the baseline measured in the same run (ratios 4/1 and 16/1).
Every run is `fab ... --json`, whose per-host rows give the SSH cost: connections opened
and remote commands (round trips) per host. Then N deploys to the 16-host fleet under load
through both traffic hosts' front doors (testkit.loadgen), counting failed requests.

Targets (issue 11): 16 hosts within 1.5x of one host for deploy and switch; round trips
per host: deploy <= 4, switch <= 2; 1 connection per host per run; flip skew < 50 ms;
0 failed requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.rig import Outcome, Rig, fmt_s, main, median, ratio, say, verdict
from testkit.demo import build_artifacts
from testkit.fleet import FleetProject, TestFleet, fleet_available
from testkit.loadgen import LoadGen
from testkit.project import Ran

SIZES = (1, 4, 16)
MAX_X = 1.5
MAX_DEPLOY_RT = 4
MAX_SWITCH_RT = 2
MAX_SKEW_MS = 50.0
# the deploy and switch themselves: the after-switch watch (10 s by default) would add the
# same seconds to every size and hide the ratio
NO_WATCH = "[watch]\nseconds = 0\n"


def _json_run(proj: FleetProject, *args: str) -> tuple[Ran, dict[str, Any]]:
    ran = proj.fab(*args, "--json", timeout=300)
    return ran, json.loads(ran.stdout)


def cost(result: dict[str, Any]) -> dict[str, int]:
    """Worst host of one run: remote commands (round trips) and connections."""
    rows = result["hosts"]
    app = [r for r in rows if "app" in r["role"]]
    traffic = [r for r in rows if "traffic" in r["role"]]
    return {"rt_app": max((r["commands"] for r in app), default=0),
            "rt_traffic": max((r["commands"] for r in traffic), default=0),
            "connections": max(r["connections"] for r in rows),
            # the other round trips, which the targets do not count: SFTP operations (the
            # primary traffic host holds the lock, state and history) and HTTP tunnels
            "files_app": max((r["file_ops"] for r in app), default=0),
            "files_traffic": max((r["file_ops"] for r in traffic), default=0),
            "tunnels_app": max((r["tunnels"] for r in app), default=0),
            "tunnels_traffic": max((r["tunnels"] for r in traffic), default=0)}


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    del rig  # the fleet is this benchmark's own rig
    ok, reason = fleet_available()
    if not ok:
        line = f"fleet: not measured: {reason}"
        return Outcome({"fleet": {"skipped": reason}}, line, True)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        return _in_fleet(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _in_fleet(work: Path, args: argparse.Namespace) -> Outcome:
    arts = build_artifacts(work / "dist", ("v1", "v2", "v3"))
    reps = 3 if args.quick else 5
    loaded_deploys = 3 if args.quick else 10
    with TestFleet(16, 2) as fleet:
        projects = {n: fleet.project(work / f"demo{n}", arts, app=f"demo{n}", apps=n,
                                     listen=8000 + n, control_port=8100 + n,
                                     blue=9000 + 10 * n + 1, green=9000 + 10 * n + 2,
                                     extra_toml=NO_WATCH)
                    for n in SIZES}
        try:
            return _measure(projects, reps, loaded_deploys)
        finally:
            for p in projects.values():
                p.stop_everything()


def _measure(projects: dict[int, FleetProject], reps: int, loaded: int) -> Outcome:
    for p in projects.values():  # both slots warm, every artifact on every host
        p.deploy("v1", timeout=300)
        p.deploy("v2", timeout=300)
    deploys: dict[int, list[float]] = {n: [] for n in SIZES}
    # the run's own seconds, without Python's start-up: on a loaded box that start-up is
    # seconds, the same for every size, and it dilutes the wall ratio
    inproc: dict[int, list[float]] = {n: [] for n in SIZES}
    switches: dict[int, list[float]] = {n: [] for n in SIZES}
    costs: dict[str, list[dict[str, int]]] = {"deploy": [], "switch": []}
    skews: list[float] = []
    for i in range(reps):
        version = ("v3", "v2")[i % 2]
        for n, p in projects.items():
            ran, result = _json_run(p, "deploy", "--artifact", str(p.artifacts[version]),
                                    "--version", version)
            deploys[n].append(ran.wall)
            inproc[n].append(result["seconds"])
            ran_s, result_s = _json_run(p, "switch")
            switches[n].append(ran_s.wall)
            if n == 16:
                costs["deploy"].append(cost(result))
                costs["switch"].append(cost(result_s))
                skews += [x for x in (result.get("flip_skew_ms"),
                                      result_s.get("flip_skew_ms")) if x is not None]
            say(f"fleet[{n:>2} hosts] rep {i + 1}: deploy {fmt_s(ran.wall)} (in-process "
                f"{result['seconds']:.3f}s), switch {fmt_s(ran_s.wall)}; skew "
                f"{result.get('flip_skew_ms')}/{result_s.get('flip_skew_ms')} ms")
    dep = {n: median(v) for n, v in deploys.items()}
    dep_in = {n: median(v) for n, v in inproc.items()}
    sw = {n: median(v) for n, v in switches.items()}
    rt_deploy = max(max(c["rt_app"], c["rt_traffic"]) for c in costs["deploy"])
    rt_switch = max(max(c["rt_app"], c["rt_traffic"]) for c in costs["switch"])
    conns = max(c["connections"] for cs in costs.values() for c in cs)
    other = {k: max(c[k] for c in costs["deploy"]) for k in
             ("files_app", "files_traffic", "tunnels_app", "tunnels_traffic")}
    skew_med, skew_max = median(skews), max(skews) if skews else float("nan")

    big = projects[16]
    gens = [LoadGen(h.url(big.listen), label=h.label, max_duration=1800).start()
            for h in big.front_hosts]
    loaded_walls = []
    try:
        for i in range(loaded):
            version = ("v3", "v2")[i % 2]
            loaded_walls.append(big.deploy(version, timeout=300).wall)
    finally:
        results = [g.stop() for g in gens]
    total = sum(r.total for r in results)
    failed = sum(r.failed for r in results)
    for r in results:
        say(f"fleet-load[{r.label}]: {r.result_line()}")

    x_dep, x_sw = ratio(dep[16], dep[1]), ratio(sw[16], sw[1])
    checks = {"deploy_x": x_dep <= MAX_X, "switch_x": x_sw <= MAX_X,
              "deploy_rt": rt_deploy <= MAX_DEPLOY_RT, "switch_rt": rt_switch <= MAX_SWITCH_RT,
              "connections": conns == 1, "skew": skew_max < MAX_SKEW_MS,
              "no_failed_requests": failed == 0 and total > 0}
    ok = all(checks.values())
    x_in = ratio(dep_in[16], dep_in[1])
    res = {"deploy_s": dep, "switch_s": sw, "deploy_inprocess_s": dep_in,
           "deploy_inprocess_x16": x_in, "deploy_x16": x_dep, "switch_x16": x_sw,
           "deploy_x4": ratio(dep[4], dep[1]), "switch_x4": ratio(sw[4], sw[1]),
           "round_trips_deploy": rt_deploy, "round_trips_switch": rt_switch,
           "costs": costs, "connections_per_host": conns, "skew_ms_median": skew_med,
           "skew_ms_max": skew_max, "skews_ms": skews, "loaded_deploys": loaded,
           "loaded_deploy_s": median(loaded_walls), "requests": total,
           "failed_requests": failed, "checks": checks, "reps": reps, "ok": ok}
    missed = [k for k, v in checks.items() if not v]
    line = (f"fleet: deploy 1/4/16 hosts {dep[1]:.2f}/{dep[4]:.2f}/{dep[16]:.2f}s "
            f"(16 vs 1: x{x_dep:.2f}; in-process {dep_in[1]:.2f}/{dep_in[4]:.2f}/"
            f"{dep_in[16]:.2f}s: x{x_in:.2f}), switch {sw[1]:.2f}/{sw[4]:.2f}/{sw[16]:.2f}s "
            f"(x{x_sw:.2f}) (median of {reps}); SSH round trips per host deploy {rt_deploy}, "
            f"switch {rt_switch} (besides: deploy SFTP ops per app/traffic host "
            f"{other['files_app']}/{other['files_traffic']}, HTTP tunnels "
            f"{other['tunnels_app']}/{other['tunnels_traffic']}); "
            f"connections per host per run {conns}; flip skew over 2 lua "
            f"traffic hosts median {skew_med:.1f} ms, max {skew_max:.1f} ms; {loaded} deploys "
            f"to 16 hosts under load: {failed} of {total} requests failed "
            f"[targets x<={MAX_X} rt<={MAX_DEPLOY_RT}/{MAX_SWITCH_RT} conn=1 skew<"
            f"{MAX_SKEW_MS:g}ms 0 failed: {verdict(ok)}"
            + (f" ({', '.join(missed)})" if missed else "") + "]")
    return Outcome({"fleet": res}, line, ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("fleet", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
