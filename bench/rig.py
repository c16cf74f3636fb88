"""What the speed measurements share: the rig, the arithmetic, and one command line.

The rig runs on 127.0.0.1: one throwaway OpenSSH sshd (testkit.sshd), a private nginx
per switch mode (one with the lua module for nginx.mode = "lua", one plain for "reload"),
each started when first needed, and projects (testkit.project.Project) deploying the
counting demo app (bench/countapp.py) through them over real SSH with the real `fab`.

Every measurement runs as

    .venv/bin/python -m bench.NAME [--quick] [--json out.json] [--keep] [--with-bashrc]

prints detail lines, then ONE result line last, and exits 1 when it missed its target.

Remote shell: sshd runs each command through root's login shell, and bash sources
~/.bashrc for sshd; on a dev box that file can be slow (pyenv init: ~0.1 s a command here).
By default the rig's sshd sets SHLVL=1 so it is skipped, as for a deploy user without
heavy rc files; `--with-bashrc` measures with it (bench/ssh_exec.py prints its cost).

Every process is started here and stopped by PID (apps through their pidfiles).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.countapp import build_artifact, parse_app_log
from testkit.fabout import (
    Phase,
    healthy_after,
    parse_phases,
    parse_target_slot,
    parse_total,
    phase_totals,
    phases_text,
    reported_probes,
    uploaded_bytes,
)
from testkit.nginx import PrivateNginx
from testkit.project import Project, Ran, run, ssh_toml
from testkit.sshd import TestSshd

# ------------------------------------------------------------------ arithmetic and output


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("nan")


def deploy_overhead(wall: float, upload: float, health: float) -> float:
    """What the tool itself costs: the wall time minus shipping bytes minus the app's boot."""
    return wall - upload - health


def median_phases(runs: Sequence[Sequence[Phase]]) -> dict[str, float]:
    names: list[str] = []
    for phases in runs:
        for n in phase_totals(phases):
            if n not in names:
                names.append(n)
    return {n: round(median([phase_totals(ph).get(n, 0.0) for ph in runs]), 4) for n in names}


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}s"


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"x{x:.2f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def say(text: str) -> None:
    print(text, flush=True)


def checked(ran: Ran, what: str) -> Ran:
    if ran.returncode != 0:
        raise RuntimeError(f"{what} failed (rc={ran.returncode}): {shlex.join(ran.args)}\n"
                           f"{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}")
    return ran


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                           check=False).stderr.strip().replace("nginx version: ", "")
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                         check=False).stderr.strip().split(",")[0]
    import paramiko
    return (f"{os.cpu_count()} x {cpu}, Linux {os.uname().release}, python "
            f"{sys.version.split()[0]}, paramiko {paramiko.__version__}, {nginx}, {ssh}")


# ------------------------------------------------------------------ the rig


class Rig:
    """sshd + one nginx per switch mode on loopback, and the projects deploying through
    them. Everything is started when first used and stopped by `close()`."""

    def __init__(self, work: Path, *, with_bashrc: bool = False) -> None:
        self.work = work
        self.with_bashrc = with_bashrc
        # SHLVL=1 in the session makes the bash that sshd starts for each command skip
        # ~/.bashrc (bash sources it for sshd only at shell level 1)
        self._sshd = TestSshd(work / "sshd",
                              extra_config=() if with_bashrc else ("SetEnv SHLVL=1",))
        self._nginx = {"lua": PrivateNginx(work / "nginx-lua", lua=True),
                       "reload": PrivateNginx(work / "nginx-reload")}
        self._started: list[Any] = []
        self.projects: list[Project] = []
        self.built = 0

    def _start(self, thing: Any) -> Any:
        if thing not in self._started:
            thing.start()
            self._started.append(thing)
        return thing

    @property
    def sshd(self) -> TestSshd:
        return self._start(self._sshd)  # type: ignore[no-any-return]

    def nginx(self, mode: str) -> PrivateNginx:
        return self._start(self._nginx[mode])  # type: ignore[no-any-return]

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self.projects:
            with contextlib.suppress(Exception):
                p.stop_everything()
        for thing in reversed(self._started):
            with contextlib.suppress(Exception):
                thing.stop()

    def project(self, name: str, mode: str, *, local: bool = False, **fields: Any) -> Project:
        """A project deploying over SSH to the rig's sshd (or to the `local` host)."""
        hosts = 'app = ["local"]' if local else f'app = ["127.0.0.1:{self.sshd.port}"]'
        p = Project(self.work / name, self.nginx(mode), hosts_toml=hosts,
                    ssh_toml="" if local else ssh_toml(self.sshd), mode=mode,
                    keep_releases=3, health_timeout=30, drain_timeout=5, **fields).write()
        self.projects.append(p)
        return p

    def new_artifact(self, blob_bytes: int = 0) -> tuple[Path, str]:
        """A fresh version of the counting demo app: (artifact, version)."""
        self.built += 1
        version = f"b{self.built}"
        return build_artifact(self.work / "dist", version, blob_bytes), version

    def deploy_new(self, proj: Project, blob_bytes: int = 0) -> tuple[Ran, Path, str]:
        art, ver = self.new_artifact(blob_bytes)
        return proj.deploy(ver, artifact=art, timeout=180), art, ver

    def ssh(self, command: str, timeout: float = 60.0) -> Ran:
        return run(self.sshd.ssh_argv(command), timeout=timeout)


def configure(proj: Project, health_interval: float | None = None, **app_env: str) -> Project:
    """Rewrite the project's bluegreen.toml with this health.interval and app environment
    (both back to the defaults when not given)."""
    proj.health_interval = health_interval
    proj.app_env = dict(app_env)
    return proj.write()


def one_deploy(rig: Rig, proj: Project, warmup: float, interval: float | None
               ) -> dict[str, Any]:
    """Deploy a fresh artifact whose app is healthy WARMUP seconds after it starts; the
    figures of that deploy, and the app's own timeline of the health probes it received."""
    configure(proj, health_interval=interval, WARMUP_SECONDS=f"{warmup:g}")
    ran, _, _ = rig.deploy_new(proj)
    phases = parse_phases(ran.stdout)
    slot = parse_target_slot(ran.stdout) or "?"
    tl = parse_app_log(proj.app_log(slot))
    totals = phase_totals(phases)
    up, health = totals.get("upload", 0.0), healthy_after(phases) or totals.get("health", 0.0)
    inproc = parse_total(ran.stdout)
    row: dict[str, Any] = {
        "warmup_s": warmup, "interval": interval, "wall_s": ran.wall,
        "inproc_s": inproc, "phases": totals, "upload_s": up, "health_s": health,
        "overhead_s": deploy_overhead(ran.wall, up, health),
        "overhead_inproc_s": deploy_overhead(inproc or float("nan"), up, health),
        "bytes": uploaded_bytes(phases), "maxrss_mb": ran.maxrss_mb,
        "tool_probes": reported_probes(phases)}
    if tl is not None:
        row.update({"app_probes": tl.probes, "probes_before_ready": tl.probes_before_ready,
                    "first_ok_delay_ms": (tl.first_ok_delay or float("nan")) * 1000,
                    "seen_delay_ms": (tl.seen_delay or float("nan")) * 1000,
                    "probes_per_s": tl.warmup_rate, "max_gap_ms": tl.max_gap * 1000})
    arm = "default" if interval is None else f"interval={interval:g}"
    say(f"deploy[W={warmup:g}s {arm}]: wall {fmt_s(ran.wall)} (in-process "
        f"{fmt_s(inproc)}) - upload {fmt_s(up)} - health {fmt_s(health)} = "
        f"overhead {fmt_s(row['overhead_s'])}; phases: {phases_text(phases)}; "
        + (f"app: healthy at +{warmup:g}s, first 200 probe +{row['first_ok_delay_ms']:.0f}ms, "
           f"streak done +{row['seen_delay_ms']:.0f}ms, {tl.probes} probes "
           f"({tl.probes_before_ready} while warming up = {tl.warmup_rate:.1f}/s, max gap "
           f"{tl.max_gap * 1000:.0f}ms)" if tl else "app log: no timeline"))
    return row


def deploy_rows(rig: Rig, proj: Project, warmup: float, n: int,
                intervals: Sequence[float | None] = (None,)) -> list[dict[str, Any]]:
    """n deploys per health.interval arm (None: the default), the arms interleaved."""
    return [one_deploy(rig, proj, warmup, interval)
            for _ in range(n) for interval in intervals]


# ------------------------------------------------------------------ the command line


@dataclass
class Outcome:
    """What a measurement hands back: every number, its one result line, target met."""

    result: dict[str, Any]
    line: str
    ok: bool = True


def main(name: str, doc: str, measure: Callable[[Rig, argparse.Namespace], Outcome],
         argv: Sequence[str] | None = None,
         add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse the common flags, run `measure` on a fresh rig, print its result line last,
    write the JSON; exit 0 when the target was met, 1 when missed, 130 when interrupted."""
    ap = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions (and a 20 MiB artifact instead of 100 MiB)")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--with-bashrc", action="store_true",
                    help="let each remote command source root's ~/.bashrc (default: the "
                         "sshd sets SHLVL=1 so it is skipped, as for a deploy user without "
                         "heavy rc files)")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args(argv)
    args.n = 3 if args.quick else 7  # repetitions of a quick command
    args.deploys = 2 if args.quick else 4
    args.blob_mb = 20 if args.quick else 100
    args.reps = 2 if args.quick else 3  # repetitions of a big upload

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix=f"bluegreen-{name}-"))
    command = shlex.join([sys.executable, "-m", f"bench.{name}", *sys.argv[1:]])
    doc_out: dict[str, Any] = {"name": name, "machine": machine(), "quick": args.quick,
                               "command": command, "loadavg_start": os.getloadavg()}
    say(f"{name}: {doc_out['command']}")
    say(f"{name}: {doc_out['machine']}; load average {doc_out['loadavg_start'][0]:.2f}; "
        f"work dir {work}")
    began = time.monotonic()
    outcome: Outcome | None = None
    try:
        with Rig(work, with_bashrc=args.with_bashrc) as rig:
            outcome = measure(rig, args)
    except KeyboardInterrupt:
        say(f"{name}: interrupted; everything started was stopped")
        return 130
    finally:
        doc_out["seconds"] = round(time.monotonic() - began, 1)
        doc_out["loadavg_end"] = os.getloadavg()
        if outcome is not None:
            doc_out.update({"result": outcome.result, "line": outcome.line, "ok": outcome.ok})
        if args.json:
            args.json.write_text(json.dumps(doc_out, indent=2, sort_keys=True, default=str)
                                 + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    say(f"{name}: took {doc_out['seconds']:.0f}s; load average now "
        f"{doc_out['loadavg_end'][0]:.2f} (other work on this machine inflates every wall "
        "time; ratios are interleaved)")
    say(outcome.line)
    return 0 if outcome.ok else 1
