#!/usr/bin/env python3
"""Speed benchmark: `fab switch/rollback/deploy/status` over real SSH on loopback, each
measured against a baseline taken side by side in the same run.

    .venv/bin/python bench/speed.py [--quick] [--json out.json] [--keep]

Everything runs on 127.0.0.1: one throwaway OpenSSH sshd (tests/support/sshd.py), two
private nginx (one with the lua module for nginx.mode = "lua", one plain for "reload"),
and the demo app, deployed by the real `fab` command as a user runs it. Each measurement
prints one `speed ...` line with its baseline and ratio; the last line is the summary:

  switch / rollback  `fab switch|rollback` wall (median of N) vs the floor: a bare
                     `ssh host 'nginx -t && nginx -s reload'` (median of N), interleaved.
                     Where the time goes: in-process time (fab's own "in X.XXs") vs
                     Python + fab startup (`fab -l`).
  deploy overhead    deploy wall - upload phase - health phase, with every phase's time.
  health detection   the app (demo app + a request logger) answers 503 for WARMUP_SECONDS
                     after it starts; its log gives when it became healthy, every probe it
                     received, and when the tool's probe streak completed.
  upload             a 100 MB incompressible tarball: paramiko SFTP (`SshHost.put`, what
                     fab uses) vs OpenSSH `scp` of the same file to the same sshd; the same
                     artifact deployed again sends 0 bytes.
  history            `fab status` and `fab deploy` with 0 vs 1,000 history entries.
  memory             peak RSS of the `fab deploy` process (wait4 rusage of that child).

Remote shell: sshd runs each command through root's login shell, and bash sources
~/.bashrc for sshd; on a dev box that file can be slow (pyenv init: ~0.1 s a command here).
By default the bench's sshd sets SHLVL=1 so it is skipped, as for a deploy user without
heavy rc files; `--with-bashrc` measures with it. Its cost is printed either way.

Every process is started here and stopped by PID (apps through their pidfiles).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "examples" / "demo"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

DEMO_APP = REPO / "examples" / "demo" / "app" / "app.py"
TUNED_INTERVAL = 0.05  # a health.interval that keeps detection under 100 ms (see report)
TARGETS = {"switch_s": 1.0, "switch_x_floor": 3.0, "deploy_overhead_s": 1.0,
           "health_detect_ms": 100.0, "upload_ratio": 0.8, "history_ratio": 1.25}

# ------------------------------------------------------------------ the app we deploy
# The demo app, unchanged, behind a wrapper that logs every request it answers with
# CLOCK_MONOTONIC (system-wide on Linux, so comparable with this process's clock):
#   bench-start <started> <ready_at>      app.STARTED and STARTED + WARMUP_SECONDS
#   bench-req <t> <path> <status> <xff>   xff "-" = a direct probe (not through nginx)
COUNT_APP = '''\
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import app
print(f"bench-start {app.STARTED:.6f} {app.STARTED + app.WARMUP:.6f}", flush=True)
def log_request(self, code="-", size="-"):
    try:
        code = int(code)
    except (TypeError, ValueError):
        pass
    xff = self.headers.get("X-Forwarded-For", "-") if self.headers else "-"
    print(f"bench-req {time.monotonic():.6f} {self.path} {code} {xff}", flush=True)
app.Handler.log_request = log_request
app.main()
'''
RUNNER = ('#!/bin/sh\nhere=$(cd "$(dirname "$0")/.." && pwd)\n'
          'exec python3 "$here/count_app.py" "$@"\n')


def build_artifact(out_dir: Path, version: str, blob_bytes: int = 0) -> Path:
    """demo app + request logger (+ a random, incompressible blob): .tar.gz, or .tar with a
    blob (gzip cannot shrink random bytes; it would only cost CPU on both ends)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"bench-{version}.tar" if blob_bytes else f"bench-{version}.tar.gz")
    tmp = target.with_name(target.name + ".tmp")

    def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 0
        tar.addfile(info, io.BytesIO(data))

    def fill(tar: tarfile.TarFile) -> None:
        add(tar, "app.py", DEMO_APP.read_bytes(), 0o644)
        add(tar, "count_app.py", COUNT_APP.encode(), 0o644)
        add(tar, "bin/runner", RUNNER.encode(), 0o755)
        add(tar, "VERSION", f"{version}\n".encode(), 0o644)
        if blob_bytes:
            blob = out_dir / f".blob-{version}"
            with open(blob, "wb") as f:  # 1 MB at a time: never the whole blob in memory
                left = blob_bytes
                while left:
                    n = min(left, 1 << 20)
                    f.write(os.urandom(n))
                    left -= n
            info = tarfile.TarInfo("blob.bin")
            info.size, info.mode, info.mtime = blob_bytes, 0o644, 0
            with open(blob, "rb") as f:
                tar.addfile(info, f)
            blob.unlink()

    if blob_bytes:
        with tarfile.open(tmp, "w") as tar:
            fill(tar)
    else:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:
            fill(tar)
    tmp.replace(target)
    return target


# ------------------------------------------------------------------ pure parsing and math

PHASE_END_RE = re.compile(r"^<-- (?P<name>\S+)\s+(?P<status>ok|FAILED)(?: after)? "
                          r"(?P<secs>\d+(?:\.\d+)?)s(?:\s+(?P<note>.*))?$")
TOTAL_RE = re.compile(r"^=== .* in (?P<secs>\d+(?:\.\d+)?)s\b")
TARGET_SLOT_RE = re.compile(r"^=== deploy \S+ \S+ -> (?P<slot>blue|green) \(port")
BYTES_RE = re.compile(r"(?P<n>\d+) bytes sent")
HEALTHY_RE = re.compile(r"healthy after (?P<secs>\d+(?:\.\d+)?)s")
PROBES_RE = re.compile(r"\((?P<n>\d+) probes?\)")


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    note: str
    ok: bool = True


def parse_phases(stdout: str) -> list[Phase]:
    """Every `<-- phase ok 0.123s  note` line, in order (a phase may appear twice)."""
    phases = []
    for line in stdout.splitlines():
        m = PHASE_END_RE.match(line.rstrip())
        if m:
            phases.append(Phase(m["name"], float(m["secs"]), (m["note"] or "").strip(),
                                m["status"] == "ok"))
    return phases


def phase_totals(phases: Sequence[Phase]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for p in phases:
        totals[p.name] = round(totals.get(p.name, 0.0) + p.seconds, 6)
    return totals


def parse_total(stdout: str) -> float | None:
    """fab's own in-process time: the `=== ... in 1.23s` line."""
    for line in reversed(stdout.splitlines()):
        m = TOTAL_RE.match(line)
        if m:
            return float(m["secs"])
    return None


def parse_target_slot(stdout: str) -> str | None:
    for line in stdout.splitlines():
        m = TARGET_SLOT_RE.match(line)
        if m:
            return m["slot"]
    return None


def uploaded_bytes(phases: Sequence[Phase]) -> int | None:
    for p in phases:
        if p.name == "upload":
            m = BYTES_RE.search(p.note)
            return int(m["n"]) if m else None
    return None


def healthy_after(phases: Sequence[Phase]) -> float | None:
    for p in phases:
        if p.name == "health":
            m = HEALTHY_RE.search(p.note)
            if m:
                return float(m["secs"])
    return None


def reported_probes(phases: Sequence[Phase]) -> int | None:
    """Probe count from the health phase's note, if the tool prints it on success."""
    for p in phases:
        if p.name == "health":
            m = PROBES_RE.search(p.note)
            if m:
                return int(m["n"])
    return None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("nan")


def deploy_overhead(wall: float, upload: float, health: float) -> float:
    """What the tool itself costs: the wall time minus shipping bytes minus the app's boot."""
    return wall - upload - health


@dataclass(frozen=True)
class HealthTimeline:
    started: float  # app.STARTED (monotonic)
    ready_at: float  # STARTED + WARMUP_SECONDS: from here on /health answers 200
    probes: int  # direct /health probes up to and including the one that closed the streak
    probes_before_ready: int
    first_ok: float | None  # monotonic time of the first 200 probe
    seen: float | None  # the probe that completed `successes` consecutive 200s
    max_gap: float  # the longest gap between two probes while warming up

    @property
    def first_ok_delay(self) -> float | None:
        return None if self.first_ok is None else self.first_ok - self.ready_at

    @property
    def seen_delay(self) -> float | None:
        return None if self.seen is None else self.seen - self.ready_at

    @property
    def warmup_rate(self) -> float:
        """Probes per second the app received while it was still answering 503."""
        span = self.ready_at - self.started
        return self.probes_before_ready / span if span > 0 else float("nan")


def parse_app_log(text: str, path: str = "/health", successes: int = 2) -> HealthTimeline | None:
    """The health-probe timeline of one app process, from its bench-* log lines.

    Direct probes (no X-Forwarded-For) are the tool's; requests through nginx (the
    post-switch verify, load) carry X-Forwarded-For and are ignored.
    """
    started = ready = None
    probes: list[tuple[float, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "bench-start":
            started, ready = float(parts[1]), float(parts[2])
        elif len(parts) >= 5 and parts[0] == "bench-req" and parts[4] == "-":
            if parts[2].split("?")[0] == path and parts[3].isdigit():
                probes.append((float(parts[1]), int(parts[3])))
    if started is None or ready is None:
        return None
    streak, seen, first_ok, counted = 0, None, None, len(probes)
    for i, (t, code) in enumerate(probes):
        if code == 200:
            first_ok = t if first_ok is None else first_ok
            streak += 1
            if streak >= successes:
                seen, counted = t, i + 1
                break
        else:
            streak = 0
    used = probes[:counted]
    before = [t for t, code in used if code != 200]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    return HealthTimeline(started, ready, len(used), len(before), first_ok, seen,
                          max(gaps) if gaps else 0.0)


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


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}s"


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"x{x:.2f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def targets(r: dict[str, Any]) -> dict[str, bool | None]:
    """Each target of issue 3's "Speed" list: True met, False missed, None not measured."""
    def ok(*keys: str) -> bool | None:
        cur: Any = r
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return bool(cur)

    def both(a: bool | None, b: bool | None) -> bool | None:
        return None if a is None or b is None else a and b

    sw = {f"{name}[{mode}]": ok("switch", mode, f"{name}_ok")
          for mode in ("lua", "reload") for name in ("switch", "rollback")}
    return {**sw, "deploy_overhead": ok("deploy", "ok"), "health_detect": ok("health", "ok"),
            "redeploy_0_bytes": ok("upload", "redeploy_ok"), "upload_vs_scp": ok("upload", "ok"),
            "history": both(ok("history", "status_ok"), ok("history", "deploy_ok")),
            "memory": ok("memory", "ok")}


def summary_line(r: dict[str, Any]) -> str:
    def g(*keys: str) -> Any:
        cur: Any = r
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    def num(v: Any, spec: str, unit: str = "") -> str:
        return "n/a" if v is None or v != v else f"{v:{spec}}{unit}"

    def x(v: Any) -> str:
        return "n/a" if v is None or v != v else f"x{v:.1f}"

    sw = g("switch", "lua") or {}
    return (
        "speed: "
        f"switch={num(sw.get('switch_s'), '.2f', 's')} "
        f"(floor {num(sw.get('floor_s'), '.2f', 's')}, {x(sw.get('switch_x'))}) "
        f"rollback={num(sw.get('rollback_s'), '.2f', 's')} "
        f"({x(sw.get('rollback_x'))}) "
        f"reload_mode_switch={num(g('switch', 'reload', 'switch_s'), '.2f', 's')} "
        f"({x(g('switch', 'reload', 'switch_x'))}) "
        f"deploy_overhead={num(g('deploy', 'overhead_s'), '.2f', 's')} "
        f"health_detect={num(g('health', 'seen_delay_ms'), '.0f', 'ms')} "
        f"(worst {num(g('health', 'seen_delay_max_ms'), '.0f', 'ms')}, "
        f"{num(g('health', 'probes_per_s'), '.1f')} probes/s; interval {TUNED_INTERVAL:g}: "
        f"{num(g('health_tuned', 'seen_delay_ms'), '.0f', 'ms')}, worst "
        f"{num(g('health_tuned', 'seen_delay_max_ms'), '.0f', 'ms')}) "
        f"upload_ratio={num(g('upload', 'ratio'), '.2f')} "
        f"redeploy_bytes={num(g('upload', 'redeploy_bytes'), 'd')} "
        f"history_ratio={num(g('history', 'status_ratio'), '.2f')}/"
        f"{num(g('history', 'deploy_ratio'), '.2f')} "
        f"maxrss={num(g('memory', 'small_mb'), '.0f')}/{num(g('memory', 'big_mb'), '.0f')}MB"
    )


# ------------------------------------------------------------------ running children


@dataclass
class Run:
    argv: list[str]
    wall: float
    rc: int
    out: str
    err: str
    maxrss_mb: float  # peak RSS of the child (wait4 rusage), MB

    def check(self, what: str) -> Run:
        if self.rc != 0:
            raise RuntimeError(f"{what} failed (rc={self.rc}): {shlex.join(self.argv)}\n"
                               f"{self.out[-2000:]}\n{self.err[-2000:]}")
        return self


def run_child(argv: Sequence[str], *, cwd: Path | None = None,
              env: dict[str, str] | None = None, timeout: float = 180.0) -> Run:
    """Run a child, wall-timed, with its own rusage (os.wait4), killed by PID on timeout."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=fo, stderr=fe)
        state = {"done": False}
        lock = threading.Lock()

        def kill() -> None:
            with lock:
                if not state["done"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            # wait without reaping, so the timer can never signal a recycled pid
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:  # interrupted: stop the child by its PID, then reap it
            with lock:
                state["done"] = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            raise
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return Run(list(argv), wall, proc.returncode, fo.read().decode(errors="replace"),
                   fe.read().decode(errors="replace"), usage.ru_maxrss / 1024.0)


def find_fab() -> str:
    here = Path(sys.executable).parent / "fab"
    for cand in (here, REPO / ".venv" / "bin" / "fab"):
        if cand.exists():
            return str(cand)
    found = shutil.which("fab")
    if not found:
        raise SystemExit("speed: cannot find `fab`; run with .venv/bin/python")
    return found


# ------------------------------------------------------------------ the rig


class Project:
    """An app repository (bluegreen.toml + fabfile.py) deploying over SSH to our sshd."""

    def __init__(self, rig: Rig, name: str, mode: str) -> None:
        from tests.support.ports import free_port

        self.rig, self.name, self.mode = rig, name, mode
        self.nginx = rig.nginx[mode]
        self.dir = rig.work / name
        self.blue, self.green = free_port(), free_port()
        self.control = free_port() if mode == "lua" else 0
        self.app_env: dict[str, str] = {}
        self.built = 0

    @property
    def root(self) -> Path:
        return self.dir / "srv" / "demo"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    def write(self, health_interval: float | None = None, **app_env: str) -> Project:
        self.app_env = dict(app_env)
        interval = "" if health_interval is None else f"interval = {health_interval}"
        sshd = self.rig.sshd
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "fabfile.py").write_text("from bluegreen.tasks import ns  # noqa: F401\n")
        env_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in self.app_env.items())
        (self.dir / "bluegreen.toml").write_text(textwrap.dedent(f"""\
            app = "demo"
            start = "{{release}}/bin/runner {{port}}"
            keep_releases = 3

            [hosts]
            app = ["127.0.0.1:{sshd.port}"]

            [slots]
            blue = {self.blue}
            green = {self.green}

            [paths]
            root = "{self.dir / 'srv'}"

            [health]
            timeout = 30
            {interval}

            [nginx]
            command = "{self.nginx.cmd_prefix}"
            target = "{self.nginx.conf_dir}/demo.conf"
            listen = "127.0.0.1:{self.nginx.port}"
            error_log = "{self.nginx.error_log}"
            pid_file = "{self.nginx.pid_file}"
            drain_timeout = 5
            mode = "{self.mode}"
            control_port = {self.control}

            [ssh]
            user = "root"
            key_file = "{sshd.user_key}"
            known_hosts = "{sshd.known_hosts}"

            [env]
            """) + env_lines + "\n")
        return self

    def fab(self, *args: str, timeout: float = 180.0) -> Run:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BLUEGREEN") and k not in ("JENKINS_URL", "BUILD_URL")}
        return run_child([self.rig.fab, *args], cwd=self.dir, env=env, timeout=timeout)

    def new_artifact(self, blob_bytes: int = 0) -> tuple[Path, str]:
        self.built += 1
        version = f"{self.name}-{self.built}"
        return build_artifact(self.rig.work / "dist", version, blob_bytes), version

    def deploy(self, artifact: Path, version: str) -> Run:
        return self.fab("deploy", "--artifact", str(artifact), "--version", version)

    def app_log(self, slot: str) -> str:
        try:
            return (self.root / "slots" / slot / "app.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop_apps(self) -> None:
        from tests.support.procs import pid_alive, stop_pid

        for pidfile in self.dir.glob("srv/**/slots/*/pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (ValueError, IndexError, OSError):
                continue
            if not pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)  # the app runs in its own session (setsid)
            stop_pid(pid, timeout=5, expect="count_app.py")


class Rig:
    """sshd + two nginx on loopback, and the projects deploying through them."""

    def __init__(self, work: Path, *, with_bashrc: bool = False) -> None:
        from tests.support.nginx import PrivateNginx
        from tests.support.sshd import TestSshd

        class BenchSshd(TestSshd):
            __test__ = False

            def render_config(self) -> str:
                # SHLVL=1 in the session makes the bash that sshd starts for each command
                # skip ~/.bashrc (bash sources it for sshd only at shell level 1)
                return super().render_config() + ("" if with_bashrc else "SetEnv SHLVL=1\n")

        self.work = work
        self.with_bashrc = with_bashrc
        self.fab = find_fab()
        self.sshd = BenchSshd(work / "sshd")
        self.nginx = {"lua": PrivateNginx(work / "nginx-lua", lua=True),
                      "reload": PrivateNginx(work / "nginx-reload")}
        self.projects: list[Project] = []

    def __enter__(self) -> Rig:
        try:
            self.sshd.start()
            for n in self.nginx.values():
                n.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self.projects:
            with contextlib.suppress(Exception):
                p.stop_apps()
        for n in self.nginx.values():
            with contextlib.suppress(Exception):
                n.stop()
        with contextlib.suppress(Exception):
            self.sshd.stop()

    def project(self, name: str, mode: str, **app_env: str) -> Project:
        p = Project(self, name, mode).write(**app_env)
        self.projects.append(p)
        return p

    def ssh(self, command: str, timeout: float = 60.0) -> Run:
        return run_child(self.sshd.ssh_argv(command), timeout=timeout)

    def scp_argv(self, local: Path, remote: str) -> list[str]:
        s = self.sshd
        return ["scp", "-q", "-F", os.devnull, "-i", str(s.user_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={s.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-P", str(s.port), str(local),
                f"{s.user}@{s.host}:{remote}"]


# ------------------------------------------------------------------ output


class Out:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}

    def line(self, text: str) -> None:
        print(text, flush=True)


OUT = Out()


def say(text: str) -> None:
    OUT.line(text)


def phases_text(phases: Sequence[Phase]) -> str:
    return " ".join(f"{p.name}={p.seconds:.3f}" for p in phases)


def median_phases(runs: Sequence[Sequence[Phase]]) -> dict[str, float]:
    names: list[str] = []
    for phases in runs:
        for n in phase_totals(phases):
            if n not in names:
                names.append(n)
    return {n: round(median([phase_totals(ph).get(n, 0.0) for ph in runs]), 4) for n in names}


# ------------------------------------------------------------------ measurements


def measure_startup(rig: Rig, proj: Project, n: int) -> dict[str, Any]:
    """What every `fab` command pays before doing anything: interpreter + imports."""
    py = [run_child([sys.executable, "-c", "pass"]).wall for _ in range(n)]
    lst = [proj.fab("-l").check("fab -l") for _ in range(n)]
    imp = run_child([sys.executable, "-c",
                     "import time; t = time.perf_counter(); import fabric, paramiko, jinja2;"
                     "import bluegreen.tasks; print(time.perf_counter() - t)"]).check("imports")
    res = {"python_s": median(py), "fab_l_s": median([r.wall for r in lst]),
           "fab_l_maxrss_mb": median([r.maxrss_mb for r in lst]),
           "imports_s": float(imp.out.strip() or "nan")}
    say(f"speed startup: `fab -l` {fmt_s(res['fab_l_s'])} (median of {n}) = python "
        f"{fmt_s(res['python_s'])} + imports (fabric, paramiko, jinja2, bluegreen) "
        f"{fmt_s(res['imports_s'])} + the rest; maxrss {res['fab_l_maxrss_mb']:.0f} MB")
    return res


def measure_ssh_exec(rig: Rig, proj: Project, n: int) -> dict[str, Any]:
    """Per-command cost over an open connection, through bluegreen's own SshHost."""
    from bluegreen import config
    from bluegreen.hosts import open_host

    cfg = config.load(str(proj.dir / "bluegreen.toml"), overrides=[], environ={})
    host = open_host(cfg.hosts.app[0], cfg)
    try:
        t = time.perf_counter()
        host.run("true")
        connect = time.perf_counter() - t
        runs, chans, reads = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            host.run("true")
            runs.append(time.perf_counter() - t)
            t = time.perf_counter()
            with contextlib.suppress(OSError):
                host.http_get(proj.nginx.port, "/", timeout=2)
            chans.append(time.perf_counter() - t)
            t = time.perf_counter()
            host.read(str(proj.nginx.conf))
            reads.append(time.perf_counter() - t)
        nodelay = host.conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        host.close()
    bare = [rig.ssh("true").wall for _ in range(n)]
    # sshd runs every command as `$SHELL -c '...'`; bash sources ~/.bashrc when it sees
    # SSH_CLIENT at shell level 1, so each remote command pays the user's rc files once
    plain = median([run_child(["bash", "-c", "true"]).wall for _ in range(3)])
    as_sshd = median([run_child(["env", "-u", "SHLVL", "SSH_CLIENT=127.0.0.1 1 22", "bash",
                                 "-c", "true"]).wall for _ in range(3)])
    shell = max(0.0, as_sshd - plain)
    res = {"connect_and_first_run_s": connect, "run_true_s": median(runs),
           "http_get_s": median(chans), "sftp_read_s": median(reads),
           "ssh_true_s": median(bare), "tcp_nodelay": bool(nodelay),
           "remote_bash_start_s": shell}
    say(f"speed ssh-exec: SshHost.run('true') {fmt_s(res['run_true_s'])}, http_get via "
        f"direct-tcpip {fmt_s(res['http_get_s'])}, SFTP read {fmt_s(res['sftp_read_s'])} "
        f"(open connection, TCP_NODELAY={res['tcp_nodelay']}) vs bare `ssh host true` "
        f"{fmt_s(res['ssh_true_s'])}; root's ~/.bashrc costs {fmt_s(shell)} per remote "
        f"command on this machine, and is {'SOURCED' if rig.with_bashrc else 'skipped'} "
        f"in this run (--with-bashrc)")
    res["bashrc_sourced"] = rig.with_bashrc
    return res


def sync_lua_generation(proj: Project, timeout: float = 5.0) -> None:
    """After a reload in lua mode: send requests through the front door until the new
    workers have synced the shared dict's generation with the reloaded file, as live
    traffic would. `nginx -s reload` returns before new workers exist, so one request may
    still land on an old worker: poll the control status until its gen is the file's."""
    import urllib.request

    text = (proj.nginx.conf_dir / "demo.conf").read_text()
    m = re.search(r"file_live, file_gen = \d+, (\d+)", text)
    want = int(m[1]) if m else None
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(proj.nginx.url("/health"), timeout=2).close()  # noqa: S310
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{proj.control}/bluegreen/status", timeout=2) as r:
                if want is None or json.loads(r.read()).get("gen") == want:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError("lua generation did not sync after the reload")
        time.sleep(0.02)


def measure_switch(rig: Rig, proj: Project, n: int, startup: float) -> dict[str, Any]:
    """fab switch / rollback vs a bare ssh 'nginx -t && nginx -s reload', interleaved."""
    for _ in range(2):  # both slots warm: v1 then v2
        art, ver = proj.new_artifact()
        proj.deploy(art, ver).check(f"setup deploy {ver}")
    floor_cmd = f"{proj.nginx.cmd_prefix} -t && {proj.nginx.cmd_prefix} -s reload"

    def floor() -> float:
        took = rig.ssh(floor_cmd).check("floor").wall
        if proj.mode == "lua":
            # One request through the front door after the reload, as live traffic would
            # send: it syncs the shared dict's generation with the reloaded file. Without
            # it the next `fab switch` fails its verify (a lua-template bug: see report).
            sync_lua_generation(proj)
        return took

    proj.fab("switch").check("warm-up switch")
    proj.fab("rollback").check("warm-up rollback")
    floor()
    floors, sw, rb = [], [], []
    for _ in range(n):
        floors.append(floor())
        sw.append(proj.fab("switch").check("fab switch"))
        floors.append(floor())
        rb.append(proj.fab("rollback").check("fab rollback"))
    floor = median(floors)
    res: dict[str, Any] = {"floor_s": floor, "n": n, "floor_cmd": "ssh ... " + floor_cmd}
    for name, runs in (("switch", sw), ("rollback", rb)):
        wall = median([r.wall for r in runs])
        inproc = median([parse_total(r.out) or float("nan") for r in runs])
        ph = median_phases([parse_phases(r.out) for r in runs])
        res.update({f"{name}_s": wall, f"{name}_x": ratio(wall, floor),
                    f"{name}_min_s": min(r.wall for r in runs),
                    f"{name}_max_s": max(r.wall for r in runs),
                    f"{name}_inproc_s": inproc, f"{name}_phases": ph,
                    f"{name}_outside_s": wall - inproc})
        ok = wall < TARGETS["switch_s"] and ratio(wall, floor) <= TARGETS["switch_x_floor"]
        res[f"{name}_ok"] = ok
        say(f"speed {name}[{proj.mode}]: `fab {name}` {fmt_s(wall)} (median of {n}, "
            f"{fmt_s(res[f'{name}_min_s'])}..{fmt_s(res[f'{name}_max_s'])}) vs floor "
            f"`ssh nginx -t && nginx -s reload` {fmt_s(floor)}: {fmt_x(ratio(wall, floor))} "
            f"[target <1s and <=x3: {verdict(ok)}]")
        say(f"speed {name}[{proj.mode}]-where: in-process {fmt_s(inproc)} "
            f"({' '.join(f'{k}={v:.3f}' for k, v in ph.items())}); outside it "
            f"{fmt_s(wall - inproc)} vs python+fab startup (`fab -l`) {fmt_s(startup)}")
    return res


def measure_deploys(rig: Rig, proj: Project, warmup: float, n: int,
                    intervals: Sequence[float | None] = (None,)) -> list[dict[str, Any]]:
    """n deploys of fresh artifacts per health.interval arm (None: the default), the arms
    interleaved, with WARMUP_SECONDS=warmup; one line per deploy."""
    rows = []
    for _ in range(n):
        for interval in intervals:
            proj.write(health_interval=interval, WARMUP_SECONDS=f"{warmup:g}")
            rows.append(one_deploy(proj, warmup, interval))
    return rows


def one_deploy(proj: Project, warmup: float, interval: float | None) -> dict[str, Any]:
    art, ver = proj.new_artifact()
    run = proj.deploy(art, ver).check(f"deploy {ver}")
    phases = parse_phases(run.out)
    slot = parse_target_slot(run.out) or "?"
    tl = parse_app_log(proj.app_log(slot))
    totals = phase_totals(phases)
    up, health = totals.get("upload", 0.0), healthy_after(phases) or totals.get("health", 0.0)
    row: dict[str, Any] = {
        "warmup_s": warmup, "interval": interval, "wall_s": run.wall,
        "inproc_s": parse_total(run.out), "phases": totals, "upload_s": up, "health_s": health,
        "overhead_s": deploy_overhead(run.wall, up, health),
        "overhead_inproc_s": deploy_overhead(parse_total(run.out) or float("nan"), up, health),
        "bytes": uploaded_bytes(phases), "maxrss_mb": run.maxrss_mb,
        "tool_probes": reported_probes(phases)}
    if tl is not None:
        row.update({"app_probes": tl.probes, "probes_before_ready": tl.probes_before_ready,
                    "first_ok_delay_ms": (tl.first_ok_delay or float("nan")) * 1000,
                    "seen_delay_ms": (tl.seen_delay or float("nan")) * 1000,
                    "probes_per_s": tl.warmup_rate, "max_gap_ms": tl.max_gap * 1000})
    arm = "default" if interval is None else f"interval={interval:g}"
    say(f"speed deploy[W={warmup:g}s {arm}]: wall {fmt_s(run.wall)} (in-process "
        f"{fmt_s(row['inproc_s'])}) - upload {fmt_s(up)} - health {fmt_s(health)} = "
        f"overhead {fmt_s(row['overhead_s'])}; phases: {phases_text(phases)}; "
        + (f"app: healthy at +{warmup:g}s, first 200 probe +{row['first_ok_delay_ms']:.0f}ms, "
           f"streak done +{row['seen_delay_ms']:.0f}ms, {tl.probes} probes "
           f"({tl.probes_before_ready} while warming up = {tl.warmup_rate:.1f}/s, max gap "
           f"{tl.max_gap * 1000:.0f}ms)" if tl else "app log: no timeline"))
    return row


def health_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    seen = [r["seen_delay_ms"] for r in rows if r.get("seen_delay_ms") == r.get("seen_delay_ms")
            and "seen_delay_ms" in r]
    first = [r["first_ok_delay_ms"] for r in rows if "first_ok_delay_ms" in r]
    rate = [r["probes_per_s"] for r in rows if "probes_per_s" in r]
    return {"n": len(rows), "seen_delay_ms": median(seen),
            "seen_delay_max_ms": max(seen) if seen else float("nan"),
            "first_ok_delay_ms": median(first), "probes_per_s": median(rate),
            "probes_per_s_max": max(rate) if rate else float("nan")}


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


def remote_sha_cost(rig: Rig, path: Path) -> float:
    return rig.ssh(f"sha256sum {shlex.quote(str(path))} >/dev/null").check("sha256sum").wall


def measure_upload(rig: Rig, proj: Project, blob_mb: int, reps: int) -> dict[str, Any]:
    from bluegreen import config
    from bluegreen.hosts import open_host

    proj.write()
    art, ver = proj.new_artifact(blob_bytes=blob_mb << 20)
    size = art.stat().st_size
    dst_dir = rig.work / "upload-dst"
    dst_dir.mkdir(exist_ok=True)
    empty = rig.work / "empty.bin"
    empty.write_bytes(b"")

    def scp(src: Path) -> float:
        dst = dst_dir / f"scp-{src.name}"
        r = run_child(rig.scp_argv(src, str(dst)), timeout=300).check("scp")
        dst.unlink()
        return r.wall

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
    ok = res["ratio"] >= TARGETS["upload_ratio"]
    say(f"speed upload: {mib:.0f} MiB paramiko SFTP put (SshHost.put) {fmt_s(put_t)} = "
        f"{res['put_mb_s']:.0f} MB/s vs OpenSSH scp {fmt_s(scp_xfer)} ({fmt_s(scp_wall)} "
        f"wall - {fmt_s(scp_setup)} for an empty file) = {res['scp_mb_s']:.0f} MB/s: "
        f"ratio {res['ratio']:.2f} (wall vs wall incl. connect: "
        f"{res['ratio_vs_scp_wall']:.2f}) [target >=0.8: {verdict(ok)}] (median of {reps})")
    res["ok"] = ok
    res["variants"] = transfer_variants(rig, art, dst_dir, reps)
    for v in res["variants"].values():
        if "s" in v:
            v["ratio"] = scp_xfer / v["s"]
            v["ratio_vs_scp_wall"] = scp_wall / (v["s"] + res["put_connect_s"])
    say("speed upload-variants vs scp transfer only: " + ", ".join(
        f"{k} {v['ratio']:.2f}" for k, v in res["variants"].items() if "ratio" in v)
        + "; vs scp wall (its connection setup included, ours too): " + ", ".join(
        f"{k} {v['ratio_vs_scp_wall']:.2f}" for k, v in res["variants"].items() if "ratio" in v))

    # through fab: first deploy of the big artifact, a small one, the big one again
    big = proj.deploy(art, ver).check("deploy big")
    ph_big = parse_phases(big.out)
    small_art, small_ver = proj.new_artifact()
    small = proj.deploy(small_art, small_ver).check("deploy small")
    again = proj.deploy(art, ver).check("deploy big again")
    ph_again = parse_phases(again.out)
    stored = next((proj.root / "artifacts").glob("*.tar"), None)
    sha = remote_sha_cost(rig, stored) if stored else float("nan")
    res.update({
        "fab_big_wall_s": big.wall, "fab_big_upload_s": phase_totals(ph_big).get("upload"),
        "fab_big_bytes": uploaded_bytes(ph_big), "fab_big_maxrss_mb": big.maxrss_mb,
        "fab_small_maxrss_mb": small.maxrss_mb, "redeploy_bytes": uploaded_bytes(ph_again),
        "redeploy_upload_s": phase_totals(ph_again).get("upload"),
        "redeploy_wall_s": again.wall, "remote_sha256_s": sha,
        "fab_big_phases": phase_totals(ph_big)})
    say(f"speed upload-fab: `fab deploy` of the {mib:.0f} MiB artifact: upload phase "
        f"{fmt_s(res['fab_big_upload_s'])} ({res['fab_big_bytes']} bytes; phase = checksum "
        f"probe + transfer + remote sha256 + unpack + prune), wall {fmt_s(big.wall)}, phases: "
        f"{phases_text(ph_big)}")
    zero_ok = res["redeploy_bytes"] == 0
    say(f"speed redeploy: same {mib:.0f} MiB artifact again: {res['redeploy_bytes']} bytes sent "
        f"[target 0: {verdict(zero_ok)}], upload phase {fmt_s(res['redeploy_upload_s'])} "
        f"(one `sha256sum` of the stored artifact over ssh alone: {fmt_s(sha)}), wall "
        f"{fmt_s(again.wall)}")
    res["redeploy_ok"] = zero_ok
    return res


def transfer_variants(rig: Rig, art: Path, dst_dir: Path, reps: int) -> dict[str, Any]:
    """Where paramiko SFTP loses against scp: the same file over the same sshd, by variant,
    each on a fresh connection with TCP_NODELAY, interleaved.

    default   SFTPClient.put (what SshHost.put calls): 32 KB WRITE requests, pipelined.
              Python handles every request and its reply, and every 32 KB write is two SSH
              packets (32797 bytes with its header > 32704 of channel payload)
    w128k     pipelined 128 KB WRITE requests
    w255k     pipelined 255 KB WRITE requests: OpenSSH's sftp-server takes up to 261120
              bytes a write (its limits@openssh.com max-write-length); 8x fewer requests
              and replies for Python to handle. The proposed fix; the copy is checked
              byte for byte.
    (aes128-gcm instead of aes128-ctr + hmac-sha2-256 was measured too and did not help:
    the crypto is ~0.1 s per 100 MB here, Python's per-packet work is the cost.)
    """
    import paramiko

    s = rig.sshd
    big = 261120

    def client() -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.load_host_keys(str(s.known_hosts))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(s.host, port=s.port, username=s.user, **s.connect_kwargs)
        c.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def put(c: paramiko.SSHClient, dst: str, request: int) -> None:
        sftp = c.open_sftp()
        try:
            if request == 32768:
                sftp.put(str(art), dst, confirm=True)
                return
            with open(art, "rb") as src, sftp.open(dst, "wb") as f:
                f.set_pipelined(True)
                f.MAX_REQUEST_SIZE = request  # instance attribute: this file only
                while data := src.read(request):
                    f.write(data)
            if sftp.stat(dst).st_size != art.stat().st_size:
                raise RuntimeError("size mismatch after upload")
        finally:
            sftp.close()

    variants = {"default": 32768, "w128k": 131072, "w255k": big}
    want_sum = ""
    times: dict[str, list[float]] = {k: [] for k in variants}
    ciphers: dict[str, str] = {}
    errors: dict[str, str] = {}
    for _ in range(reps):
        for name, request in variants.items():
            if name in errors:
                continue
            try:
                c = client()
                try:
                    ciphers[name] = c.get_transport().local_cipher
                    dst = str(dst_dir / f"variant-{name.replace('+', '-')}.bin")
                    t = time.perf_counter()
                    put(c, dst, request)
                    times[name].append(time.perf_counter() - t)
                    if request == big:  # the proposed fix must deliver the same bytes
                        from bluegreen.release import inspect

                        want_sum = want_sum or inspect(art).checksum
                        if inspect(Path(dst)).checksum != want_sum:
                            raise RuntimeError("the copy differs from the artifact")
                    Path(dst).unlink()
                finally:
                    c.close()
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
    res: dict[str, Any] = {}
    mb = art.stat().st_size / 1e6
    for name in variants:
        if name in errors:
            res[name] = {"error": errors[name]}
            say(f"speed upload-variant[{name}]: failed: {errors[name]}")
            continue
        t = median(times[name])
        res[name] = {"s": t, "mb_s": mb / t, "cipher": ciphers.get(name)}
        say(f"speed upload-variant[{name}]: {fmt_s(t)} = {mb / t:.0f} MB/s "
            f"({ciphers.get(name)}, {variants[name] // 1024} KB writes, median of {reps})")
    return res


def measure_history(rig: Rig, proj: Project, n: int, entries: int = 1000) -> dict[str, Any]:
    proj.write()
    art, ver = proj.new_artifact()
    proj.deploy(art, ver).check("history setup deploy")
    lines = proj.history.read_text().splitlines()
    template = next((json.loads(x) for x in reversed(lines)
                     if json.loads(x).get("action") == "deploy"), json.loads(lines[-1]))
    now = time.time()
    full = "".join(json.dumps(history_entry(template, i, now), sort_keys=True) + "\n"
                   for i in range(entries))

    def set_history(k: int) -> None:
        proj.history.write_text(full if k else "")

    stat0, stat1, dep0, dep1 = [], [], [], []
    for _ in range(n):
        for k, bucket in ((0, stat0), (entries, stat1)):
            set_history(k)
            bucket.append(proj.fab("status", "--json").check("fab status").wall)
    nd = max(2, n // 2)
    for _ in range(nd):
        for k, bucket in ((0, dep0), (entries, dep1)):
            set_history(k)
            a, v = proj.new_artifact()
            bucket.append(proj.deploy(a, v).check("deploy").wall)
    res = {"entries": entries, "bytes": len(full), "status0_s": median(stat0),
           "status1000_s": median(stat1), "deploy0_s": median(dep0),
           "deploy1000_s": median(dep1), "n_status": n, "n_deploy": nd}
    res["status_ratio"] = ratio(res["status1000_s"], res["status0_s"])
    res["deploy_ratio"] = ratio(res["deploy1000_s"], res["deploy0_s"])
    for what in ("status", "deploy"):
        r = res[f"{what}_ratio"]
        ok = r <= TARGETS["history_ratio"]
        res[f"{what}_ok"] = ok
        say(f"speed history-{what}: `fab {what}` with {entries} history entries "
            f"({len(full) / 1e3:.0f} kB) {fmt_s(res[f'{what}1000_s'])} vs 0 entries "
            f"{fmt_s(res[f'{what}0_s'])}: {fmt_x(r)} (median of "
            f"{n if what == 'status' else nd}, interleaved) [target ~1: {verdict(ok)}]")
    return res


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 20 MB upload")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--with-bashrc", action="store_true",
                    help="let each remote command source root's ~/.bashrc (default: the "
                         "sshd sets SHLVL=1 so it is skipped, as for a deploy user without "
                         "heavy rc files; its cost per command is measured either way)")
    ap.add_argument("--only", default="", help="comma list: switch,deploy,upload,history")
    args = ap.parse_args(argv)
    n = 3 if args.quick else 7
    deploys = 2 if args.quick else 4
    blob_mb = 20 if args.quick else 100
    reps = 2 if args.quick else 3
    only = set(filter(None, args.only.split(",")))

    def want(x: str) -> bool:
        return not only or x in only

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="bluegreen-speed-"))
    res: dict[str, Any] = {"machine": machine(), "quick": args.quick,
                           "command": shlex.join([sys.executable, *sys.argv])}
    res["loadavg_start"] = os.getloadavg()
    say(f"speed: {res['command']}")
    say(f"speed: {res['machine']}; load average {res['loadavg_start'][0]:.2f}; "
        f"work dir {work}")
    began = time.monotonic()
    try:
        with Rig(work, with_bashrc=args.with_bashrc) as rig:
            lua = rig.project("lua", "lua")
            res["startup"] = measure_startup(rig, lua, n)
            res["ssh_exec"] = measure_ssh_exec(rig, lua, n)
            if want("switch"):
                res["switch"] = {}
                for mode in ("lua", "reload"):
                    p = lua if mode == "lua" else rig.project("reload", "reload")
                    res["switch"][mode] = measure_switch(rig, p, n, res["startup"]["fab_l_s"])
            if want("deploy"):
                # default health settings, and health.interval = TUNED_INTERVAL beside them
                rows = measure_deploys(rig, lua, 1.0, deploys, (None, TUNED_INTERVAL))
                slow = measure_deploys(rig, lua, 3.0, max(1, deploys // 2),
                                       (None, TUNED_INTERVAL))
                default = [r for r in rows if r["interval"] is None]
                res["deploy"] = summarize_deploys(default)
                res["deploy"]["rows"] = rows + slow
                d = res["deploy"]
                ok = d["overhead_s"] < TARGETS["deploy_overhead_s"]
                d["ok"] = ok
                say(f"speed deploy-overhead: median {fmt_s(d['overhead_s'])} = wall "
                    f"{fmt_s(d['wall_s'])} - upload - health (in-process only: "
                    f"{fmt_s(d['overhead_inproc_s'])}); median phases: "
                    f"{' '.join(f'{k}={v:.3f}' for k, v in d['phases'].items())} "
                    f"[target <1s: {verdict(ok)}]")
                for arm, want_interval in (("health", None), ("health_tuned", TUNED_INTERVAL)):
                    h = health_summary([r for r in rows + slow
                                        if r["interval"] == want_interval])
                    h["ok"] = h["seen_delay_max_ms"] <= TARGETS["health_detect_ms"]
                    res[arm] = h
                    label = ("default health settings" if want_interval is None else
                             f"health.interval = {want_interval:g}")
                    say(f"speed health-detect[{label}]: seen healthy {h['seen_delay_ms']:.0f} "
                        f"ms after the app became healthy (median of {h['n']}; worst "
                        f"{h['seen_delay_max_ms']:.0f} ms; first 200 probe "
                        f"{h['first_ok_delay_ms']:.0f} ms), {h['probes_per_s']:.1f} probes/s "
                        f"(max {h['probes_per_s_max']:.1f}) while warming up, W=1s and 3s "
                        f"[target <=100ms: {verdict(h['ok'])}]")
            if want("upload"):
                res["upload"] = measure_upload(rig, lua, blob_mb, reps)
            if want("history"):
                res["history"] = measure_history(rig, lua, n)
            small = res.get("deploy", {}).get("maxrss_mb")
            big = res.get("upload", {}).get("fab_big_maxrss_mb")
            res["memory"] = {"small_mb": small, "big_mb": big,
                             "fab_l_mb": res["startup"]["fab_l_maxrss_mb"]}
            if small is not None and big is not None:
                ok = big - small < 50
                res["memory"]["ok"] = ok
                say(f"speed memory: peak RSS of `fab deploy`: small artifact {small:.0f} MB, "
                    f"{blob_mb} MiB artifact {big:.0f} MB (`fab -l` alone "
                    f"{res['startup']['fab_l_maxrss_mb']:.0f} MB) [target: the artifact is "
                    f"not read into memory: {verdict(ok)}]")
    except KeyboardInterrupt:
        say("speed: interrupted; everything started was stopped")
        return 130
    finally:
        res["seconds"] = round(time.monotonic() - began, 1)
        res["loadavg_end"] = os.getloadavg()
        res["targets"] = targets(res)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    say(f"speed: took {res['seconds']:.0f}s; load average now {res['loadavg_end'][0]:.2f} "
        f"(other work on this machine inflates every wall time; ratios are interleaved)")
    say("speed targets: " + " ".join(f"{k}={verdict(v)}" for k, v in res["targets"].items()))
    say(summary_line(res))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
