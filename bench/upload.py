"""Upload: a 100 MiB artifact over bluegreen's SFTP vs OpenSSH scp; a re-deploy sends 0 bytes.

The same incompressible file to the same sshd, interleaved: `SshHost.put` (what `fab
deploy` uses) vs `scp`, whose connection set-up is measured apart (an empty file) and
taken off. Then through `fab`: the first deploy of the big artifact, a small one, the big
one again (already on the host: 0 bytes). Targets: at least 0.8x scp's transfer rate;
0 bytes sent for an artifact already there.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.rig import Outcome, Rig, checked, fmt_s, main, median, say, verdict
from testkit.fabout import parse_phases, phase_totals, phases_text, uploaded_bytes
from testkit.project import run as run_child

MIN_RATIO = 0.8


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    from bluegreen import config
    from bluegreen.hosts import open_host

    proj = rig.project("lua", "lua")
    rig.deploy_new(proj)  # a project that has deployed before, as when this was measured
    art, ver = rig.new_artifact(blob_bytes=args.blob_mb << 20)
    size = art.stat().st_size
    dst_dir = rig.work / "upload-dst"
    dst_dir.mkdir(exist_ok=True)
    empty = rig.work / "empty.bin"
    empty.write_bytes(b"")

    def scp(src: Path) -> float:
        dst = dst_dir / f"scp-{src.name}"
        took = checked(run_child(rig.sshd.scp_argv(src, str(dst)), timeout=300), "scp").wall
        dst.unlink()
        return took

    cfg = config.load(str(proj.dir / "bluegreen.toml"), overrides=[], environ={})

    def put_once() -> tuple[float, float]:
        host = open_host(cfg.hosts.app[0], cfg)
        try:
            t = time.perf_counter()
            host.sftp()
            conn = time.perf_counter() - t
            dst = dst_dir / "put.bin"
            t = time.perf_counter()
            host.put(art, str(dst))
            took = time.perf_counter() - t
            dst.unlink()
            return took, conn
        finally:
            host.close()

    reps = args.reps
    scp(empty)
    scp_empty, scp_big, puts, put_conn = [], [], [], []
    for _ in range(reps):  # interleaved, so page cache and load drift hit both alike
        scp_empty.append(scp(empty))
        scp_big.append(scp(art))
        took, conn = put_once()
        puts.append(took)
        put_conn.append(conn)
    scp_wall, scp_setup, put_t = median(scp_big), median(scp_empty), median(puts)
    scp_xfer = max(1e-6, scp_wall - scp_setup)
    mb = size / 1e6  # MB/s below are 10^6 bytes a second
    mib = size / (1 << 20)
    res: dict[str, Any] = {
        "size_bytes": size, "reps": reps, "scp_s": scp_wall, "scp_empty_s": scp_setup,
        "scp_xfer_s": scp_xfer, "put_s": put_t, "put_connect_s": median(put_conn),
        "scp_mb_s": mb / scp_xfer, "put_mb_s": mb / put_t,
        "ratio": scp_xfer / put_t, "ratio_vs_scp_wall": scp_wall / (put_t + median(put_conn))}
    res["ok"] = ok = res["ratio"] >= MIN_RATIO
    say(f"upload: {mib:.0f} MiB paramiko SFTP put (SshHost.put) {fmt_s(put_t)} = "
        f"{res['put_mb_s']:.0f} MB/s vs OpenSSH scp {fmt_s(scp_xfer)} ({fmt_s(scp_wall)} "
        f"wall - {fmt_s(scp_setup)} for an empty file) = {res['scp_mb_s']:.0f} MB/s: "
        f"ratio {res['ratio']:.2f} (wall vs wall incl. connect: "
        f"{res['ratio_vs_scp_wall']:.2f}) [target >=0.8: {verdict(ok)}] (median of {reps})")

    # through fab: first deploy of the big artifact, a small one, the big one again
    big = proj.deploy(ver, artifact=art, timeout=300)
    ph_big = parse_phases(big.stdout)
    rig.deploy_new(proj)
    again = proj.deploy(ver, artifact=art, timeout=300)
    ph_again = parse_phases(again.stdout)
    stored = next((proj.app_root / "artifacts").glob("*.tar"), None)
    sha = (checked(rig.ssh(f"sha256sum {shlex.quote(str(stored))} >/dev/null"),
                   "sha256sum").wall if stored else float("nan"))
    res.update({
        "fab_big_wall_s": big.wall, "fab_big_upload_s": phase_totals(ph_big).get("upload"),
        "fab_big_bytes": uploaded_bytes(ph_big), "redeploy_bytes": uploaded_bytes(ph_again),
        "redeploy_upload_s": phase_totals(ph_again).get("upload"),
        "redeploy_wall_s": again.wall, "remote_sha256_s": sha,
        "fab_big_phases": phase_totals(ph_big)})
    say(f"upload-fab: `fab deploy` of the {mib:.0f} MiB artifact: upload phase "
        f"{fmt_s(res['fab_big_upload_s'])} ({res['fab_big_bytes']} bytes; phase = checksum "
        f"probe + transfer + remote sha256 + unpack + prune), wall {fmt_s(big.wall)}, phases: "
        f"{phases_text(ph_big)}")
    res["redeploy_ok"] = zero_ok = res["redeploy_bytes"] == 0
    say(f"redeploy: same {mib:.0f} MiB artifact again: {res['redeploy_bytes']} bytes sent "
        f"[target 0: {verdict(zero_ok)}], upload phase {fmt_s(res['redeploy_upload_s'])} "
        f"(one `sha256sum` of the stored artifact over ssh alone: {fmt_s(sha)}), wall "
        f"{fmt_s(again.wall)}")
    line = (f"upload: {mib:.0f} MiB SFTP put {res['put_mb_s']:.0f} MB/s vs OpenSSH scp "
            f"{res['scp_mb_s']:.0f} MB/s: x{res['ratio']:.2f} (median of {reps}) [target "
            f">=0.8: {verdict(ok)}]; re-deploy of the same artifact: {res['redeploy_bytes']} "
            f"bytes sent [target 0: {verdict(zero_ok)}]")
    return Outcome({"upload": res}, line, ok and zero_ok)


def run(argv: Sequence[str] | None = None) -> int:
    return main("upload", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
