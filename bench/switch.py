"""`fab switch` / `fab rollback` over SSH vs a bare `ssh host 'nginx -t && nginx -s reload'`.

For each nginx.mode (lua, reload): both slots warm, then N switches and N rollbacks through
the real `fab`, interleaved with N runs of the floor, a bare ssh running what a reload-mode
switch must run at the least. Where the time goes: fab's in-process time (its own
"in X.XXs") vs the rest, beside Python + fab start-up alone (`fab -l`, measured in the same
run). Target, in both modes: under 1 s and at most 3x the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from bench.rig import (
    Outcome,
    Rig,
    checked,
    fmt_s,
    fmt_x,
    main,
    median,
    median_phases,
    ratio,
    say,
    verdict,
)
from testkit.fabout import parse_phases, parse_total
from testkit.project import Project

MAX_S = 1.0
MAX_X_FLOOR = 3.0


def sync_lua_generation(proj: Project, timeout: float = 5.0) -> None:
    """After a reload in lua mode: send requests through the front door until the new
    workers have synced the shared dict's generation with the reloaded file, as live
    traffic would. `nginx -s reload` returns before new workers exist, so one request may
    still land on an old worker: poll the control status until its gen is the file's."""
    text = (proj.nginx.conf_dir / "demo.conf").read_text()
    m = re.search(r"file_live, file_gen = \d+, (\d+)", text)
    want = int(m[1]) if m else None
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(proj.nginx.url("/health"), timeout=2).close()  # noqa: S310
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{proj.control_port}/bluegreen/status", timeout=2) as r:
                if want is None or json.loads(r.read()).get("gen") == want:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError("lua generation did not sync after the reload")
        time.sleep(0.02)


def measure_mode(rig: Rig, proj: Project, n: int, startup: float) -> dict[str, Any]:
    """fab switch / rollback vs the floor in one mode, interleaved."""
    for _ in range(2):  # both slots warm
        rig.deploy_new(proj)
    floor_cmd = f"{proj.nginx.cmd_prefix} -t && {proj.nginx.cmd_prefix} -s reload"

    def floor() -> float:
        took = checked(rig.ssh(floor_cmd), "floor").wall
        if proj.mode == "lua":
            # One request through the front door after the reload, as live traffic would
            # send: it syncs the shared dict's generation with the reloaded file. Without
            # it the next `fab switch` fails its verify (a lua-template bug: see report).
            sync_lua_generation(proj)
        return took

    proj.fab("switch")  # warm-up
    proj.fab("rollback")
    floor()
    floors, sw, rb = [], [], []
    for _ in range(n):
        floors.append(floor())
        sw.append(proj.fab("switch"))
        floors.append(floor())
        rb.append(proj.fab("rollback"))
    base = median(floors)
    res: dict[str, Any] = {"floor_s": base, "n": n, "floor_cmd": "ssh ... " + floor_cmd}
    for name, runs in (("switch", sw), ("rollback", rb)):
        wall = median([r.wall for r in runs])
        inproc = median([parse_total(r.stdout) or float("nan") for r in runs])
        ph = median_phases([parse_phases(r.stdout) for r in runs])
        res.update({f"{name}_s": wall, f"{name}_x": ratio(wall, base),
                    f"{name}_min_s": min(r.wall for r in runs),
                    f"{name}_max_s": max(r.wall for r in runs),
                    f"{name}_inproc_s": inproc, f"{name}_phases": ph,
                    f"{name}_outside_s": wall - inproc})
        ok = wall < MAX_S and ratio(wall, base) <= MAX_X_FLOOR
        res[f"{name}_ok"] = ok
        say(f"{name}[{proj.mode}]: `fab {name}` {fmt_s(wall)} (median of {n}, "
            f"{fmt_s(res[f'{name}_min_s'])}..{fmt_s(res[f'{name}_max_s'])}) vs floor "
            f"`ssh nginx -t && nginx -s reload` {fmt_s(base)}: {fmt_x(ratio(wall, base))} "
            f"[target <1s and <=x3: {verdict(ok)}]")
        say(f"{name}[{proj.mode}]-where: in-process {fmt_s(inproc)} "
            f"({' '.join(f'{k}={v:.3f}' for k, v in ph.items())}); outside it "
            f"{fmt_s(wall - inproc)} vs python+fab startup (`fab -l`) {fmt_s(startup)}")
    return res


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    lua = rig.project("lua", "lua")
    fab_l = [lua.fab("-l") for _ in range(args.n)]
    startup = median([r.wall for r in fab_l])
    res: dict[str, Any] = {"fab_l_s": startup}
    for mode in ("lua", "reload"):
        proj = lua if mode == "lua" else rig.project("reload", "reload")
        res[mode] = measure_mode(rig, proj, args.n, startup)
    ok = all(res[m][f"{k}_ok"] for m in ("lua", "reload") for k in ("switch", "rollback"))
    lu, rl = res["lua"], res["reload"]
    line = (f"switch: lua `fab switch` {lu['switch_s']:.2f}s, `fab rollback` "
            f"{lu['rollback_s']:.2f}s vs floor `ssh nginx -t && nginx -s reload` "
            f"{lu['floor_s']:.2f}s: {fmt_x(lu['switch_x'])}/{fmt_x(lu['rollback_x'])}; "
            f"reload mode `fab switch` {rl['switch_s']:.2f}s, rollback {rl['rollback_s']:.2f}s "
            f"vs {rl['floor_s']:.2f}s: {fmt_x(rl['switch_x'])}/{fmt_x(rl['rollback_x'])} "
            f"(median of {args.n}; `fab -l` {startup:.2f}s) [target <1s and <=x3: "
            f"{verdict(ok)}]")
    return Outcome({"switch": {"lua": lu, "reload": rl}, "fab_l_s": startup}, line, ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("switch", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
