"""CLI start-up: what a command costs before it does anything (issue 7).

One real project on this machine (host `local`, nginx.mode = "lua", a private nginx with
the lua module, both slots warm), then N rounds, interleaved:

    python -c pass                  the interpreter alone
    python -m bluegreen switch      a whole local switch (health check, flip, verify)
    fab --version                   fab's own start-up: its floor
    fab switch                      the same switch through fab

Goals: a local `python -m bluegreen switch` under 0.25 s wall; `fab switch` within 0.15 s
of `fab --version`. The switch's own in-process time (its "in X.XXs") and the heavy
modules `import bluegreen.cli` pulls in are printed beside, to show where the rest goes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bench.rig import Outcome, Rig, checked, main, median, say, verdict
from testkit.fabout import parse_total
from testkit.project import clean_env, fab_path
from testkit.project import run as run_child

LOCAL_SWITCH_MAX_S = 0.25
FAB_OVER_VERSION_MAX_S = 0.15
# what a switch on a `local` host needs none of (the lead's lazy-import work, issue 7)
HEAVY = ("fabric", "invoke", "paramiko", "requests", "jinja2", "waitress",
         "bluegreen.automation")


def imported_by(module: str) -> list[str]:
    """Which HEAVY modules `import MODULE` loads, in a fresh interpreter."""
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    return checked(run_child([sys.executable, "-c", code], env=clean_env()),
                   f"import {module}").stdout.split()


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    proj = rig.project("local", "lua", local=True)
    for _ in range(2):  # both slots warm: a switch has somewhere to go
        rig.deploy_new(proj)
    env = clean_env()
    py, bg, fab_v, fab_sw = [], [], [], []
    bg_in, fab_in = [], []

    def one(argv: list[str], what: str) -> Any:
        return checked(run_child(argv, cwd=proj.dir, env=env, timeout=120), what)

    one([sys.executable, "-m", "bluegreen", "switch"], "warm-up switch")
    for _ in range(args.n):
        py.append(one([sys.executable, "-c", "pass"], "python -c pass").wall)
        r = one([sys.executable, "-m", "bluegreen", "switch"], "python -m bluegreen switch")
        bg.append(r.wall)
        bg_in.append(parse_total(r.stdout) or float("nan"))
        fab_v.append(one([fab_path(), "--version"], "fab --version").wall)
        r = one([fab_path(), "switch"], "fab switch")
        fab_sw.append(r.wall)
        fab_in.append(parse_total(r.stdout) or float("nan"))
    res: dict[str, Any] = {
        "n": args.n, "mode": proj.mode, "host": "local",
        "python_pass_s": median(py), "bluegreen_switch_s": median(bg),
        "bluegreen_switch_inproc_s": median(bg_in), "fab_version_s": median(fab_v),
        "fab_switch_s": median(fab_sw), "fab_switch_inproc_s": median(fab_in),
        "heavy_imports_of_bluegreen_cli": imported_by("bluegreen.cli"),
        "heavy_imports_of_bluegreen_tasks": imported_by("bluegreen.tasks")}
    res["fab_over_version_s"] = res["fab_switch_s"] - res["fab_version_s"]
    res["local_ok"] = local_ok = res["bluegreen_switch_s"] < LOCAL_SWITCH_MAX_S
    res["fab_ok"] = fab_ok = res["fab_over_version_s"] <= FAB_OVER_VERSION_MAX_S
    cli_heavy = " ".join(res["heavy_imports_of_bluegreen_cli"]) or "none of them"
    tasks_heavy = " ".join(res["heavy_imports_of_bluegreen_tasks"]) or "none of them"
    say(f"startup-where: `python -m bluegreen switch` {res['bluegreen_switch_s']:.3f}s, of "
        f"which the switch itself (in-process) {res['bluegreen_switch_inproc_s']:.3f}s; "
        f"of {' '.join(HEAVY)}, `import bluegreen.cli` loads: {cli_heavy}")
    say(f"startup-where: `fab switch` {res['fab_switch_s']:.3f}s, in-process "
        f"{res['fab_switch_inproc_s']:.3f}s; `import bluegreen.tasks` loads: {tasks_heavy}")
    line = (f"startup: local `python -m bluegreen switch` {res['bluegreen_switch_s']:.2f}s vs "
            f"`python -c pass` {res['python_pass_s']:.2f}s [goal <{LOCAL_SWITCH_MAX_S:g}s: "
            f"{verdict(local_ok)}]; `fab switch` {res['fab_switch_s']:.2f}s vs `fab --version` "
            f"{res['fab_version_s']:.2f}s: +{res['fab_over_version_s']:.2f}s [goal "
            f"<=+{FAB_OVER_VERSION_MAX_S:g}s: {verdict(fab_ok)}] (median of {args.n}, "
            f"{proj.mode} mode, local host)")
    return Outcome({"startup": res}, line, local_ok and fab_ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("startup", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
