"""Memory: peak RSS of `fab deploy`, a small artifact vs a 100 MiB one, beside `fab -l`.

Peak RSS is the child's own (wait4 rusage). Deploys over SSH of the small counting demo
app and of the same app with a 100 MiB incompressible blob (the upload streams it), and
`fab -l` alone (Python + imports). Target: the artifact is not read into memory (the big
deploy peaks less than 50 MB above the small one).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.rig import Outcome, Rig, main, median, say, verdict

MAX_GROWTH_MB = 50


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    proj = rig.project("lua", "lua")
    fab_l = median([proj.fab("-l").maxrss_mb for _ in range(args.n)])
    small = median([rig.deploy_new(proj)[0].maxrss_mb for _ in range(args.deploys)])
    big = rig.deploy_new(proj, blob_bytes=args.blob_mb << 20)[0].maxrss_mb
    ok = big - small < MAX_GROWTH_MB
    res = {"small_mb": small, "big_mb": big, "fab_l_mb": fab_l, "ok": ok,
           "blob_mib": args.blob_mb}
    say(f"memory: peak RSS of `fab deploy`: small artifact {small:.0f} MB (median of "
        f"{args.deploys}), {args.blob_mb} MiB artifact {big:.0f} MB (`fab -l` alone "
        f"{fab_l:.0f} MB)")
    line = (f"memory: peak RSS of `fab deploy` {small:.0f} MB, {big:.0f} MB with a "
            f"{args.blob_mb} MiB artifact; `fab -l` alone {fab_l:.0f} MB [target: the "
            f"artifact is not read into memory: {verdict(ok)}]")
    return Outcome({"memory": res}, line, ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("memory", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
