"""N `fab` operations in a row under load: the zero-failed-requests check.

Used by tests/integration/test_zero_downtime.py (8 operations, in `make test`),
tests/integration/test_haproxy_zero_downtime.py (the haproxy router) and by
bench/zero_downtime.py (24 operations, lua, reload and haproxy, beside the classic scripts).

One run, everything on loopback under one work directory:

- a private nginx (2 workers; the lua module loaded in lua mode; `worker_shutdown_timeout`
  in the main context, where it must live); in mode "haproxy", a private haproxy instead
  (master-worker, `-f haproxy.cfg -f conf.d`, testkit.haproxy) and `traffic.router =
  "haproxy"`;
- a project the way a user has one (testkit.project.Project): host `local`, the chosen
  `nginx.mode` (none at all in modes "default" and "include-tls": auto decides; in
  "include-tls" bluegreen's snippets are included in a user's own TLS server block and the
  load client goes through https, checking a certificate made by openssl for the run),
  `drain_timeout` 30 s, and `[env] GRACEFUL = "0"` so the demo app dies at
  once on SIGTERM: the orchestrator, not the app, has to make every operation safe;
- demo releases built with examples/demo/build.py (testkit.demo);
- testkit.loadgen sending all four classes at once (keep-alive GET, keep-alive POST,
  fresh-connection GET, long requests), recording every request, never retrying.

Then N operations IN A ROW, each one a `fab` subprocess, mixing back-to-back `fab deploy`
(each one replaces the slot that was live moments ago and may still hold long requests),
`fab switch`, `fab rollback` (warm, and cold after a refused deploy) and a deploy of an
unhealthy build that must be refused without touching traffic. fab's output is read line by
line with a timestamp (testkit.fabout.PhaseReader), so every phase (stop = drain + stop,
start, health, switch) has a window on the same clock as the load client's records.
"""

from __future__ import annotations

import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluegreen.render import is_lua_config
from testkit import REPO
from testkit.demo import build_artifacts
from testkit.fabout import Phase, PhaseReader
from testkit.haproxy import HaproxyProject, PrivateHaproxy
from testkit.loadgen import ClassConfig, LoadGen, LoadResult, Record, collapse
from testkit.nginx import PrivateNginx
from testkit.ports import free_port
from testkit.project import Project
from testkit.shapes import (
    Cert,
    drop_nginx_keys,
    include_tls_keys,
    make_cert,
    set_nginx_keys,
    user_tls_server,
)

MAX_OPS = 40
SLOW = "slow"
# After a switch phase, its effects may trail it a little (reload mode: old workers close
# idle client connections while they retire), so a switch window extends this far.
SWITCH_TAIL = 1.0
# One operation pattern, repeated. Every deploy goes to the idle slot, which (after the
# previous deploy, switch or rollback) is the slot that was live moments ago: long requests
# may still be in flight to it, and only the drain keeps them alive.
CYCLE: tuple[str, ...] = (
    "deploy",            # -> idle slot
    "deploy",            # back to back: replaces the slot the previous deploy took traffic off
    "switch",
    "deploy",            # replaces the slot the switch just left
    "rollback",          # warm: the previous release still runs in the idle slot
    "switch",
    "deploy",
    "rollback",
    "deploy-unhealthy",  # refused at health: traffic must not move, nothing may fail
    "rollback",          # cold: the refused deploy reused the previous release's slot
    "deploy",
    "switch",
)
EXPECT_OK = {"deploy": True, "switch": True, "rollback": True, "deploy-unhealthy": False}
SLOT_IN_DETAIL = re.compile(r"slot (?P<slot>blue|green)\b")
# After a reload the old workers finish their in-flight requests, then exit; this bounds
# how long they may linger. Longer than any request a switch must keep (the drain waits
# for those), as the README's nginx setup says.
NGINX_MAIN_EXTRA = ("worker_shutdown_timeout 60s;",)
# nginx.mode, the haproxy router, and two classes that never set nginx.mode (so auto
# decides, and this nginx loads the lua module): `default`, and `include-tls`, bluegreen's
# pieces included in the user's own TLS server block with the load client on https
MODES = ("lua", "reload", "haproxy", "default", "include-tls")
AUTO_MODES = ("default", "include-tls")


# --------------------------------------------------------------------------------------
# what one `fab` run did
# --------------------------------------------------------------------------------------
@dataclass
class Op:
    index: int  # 1-based; 0 is the setup deploy (before the load starts)
    kind: str  # deploy | deploy-unhealthy | switch | rollback
    version: str = ""  # what a deploy ships
    args: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    rc: int = -1
    phases: list[Phase] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    live_before: str = ""  # "slot version" from state.json
    live_after: str = ""
    slots_before: dict[str, str] = field(default_factory=dict)  # slot -> version
    drain: dict[str, Any] = field(default_factory=dict)  # filled by analyse()
    failed_near_switch: int = 0  # failed requests overlapping the switch window (analyse())

    @property
    def expect_ok(self) -> bool:
        return EXPECT_OK[self.kind]

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def as_expected(self) -> bool:
        return self.ok == self.expect_ok

    @property
    def wall(self) -> float:
        return self.end - self.start

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def switch_window(self, tail: float = SWITCH_TAIL) -> tuple[float, float] | None:
        sw = self.phase("switch")
        if sw is None or not sw.end:
            return None
        return (sw.start, sw.end + tail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "kind": self.kind, "version": self.version,
            "rc": self.rc, "ok": self.ok, "expected_ok": self.expect_ok,
            "as_expected": self.as_expected, "wall_s": round(self.wall, 3),
            "live_before": self.live_before, "live_after": self.live_after,
            # a list: a refused deploy has two stop phases
            "phases": [{"name": p.name, "s": round(p.seconds, 3), "ok": p.ok, "note": p.note}
                       for p in self.phases],
            "drain": self.drain,
            "failed_near_switch": self.failed_near_switch,
            "output_tail": self.output[-12:] if not self.as_expected else [],
        }


def live_of(state: dict[str, Any]) -> str:
    """"slot version" of what state.json says is live, "-" before the first deploy."""
    live = state.get("live", "")
    return f"{live} {state['slots'][live]['version']}" if live else "-"


def slot_versions(state: dict[str, Any]) -> dict[str, str]:
    return {s: r.get("version", "") for s, r in state.get("slots", {}).items()}


def run_op(project: Project, op: Op, *args: str, timeout: float = 120.0) -> Op:
    """Run `fab ARGS` in the project for OP; every output line stamped with
    time.monotonic(). Past `timeout` fab is killed by its PID (what it started itself,
    the slot processes, are stopped by Project.stop_everything() at the end)."""
    op.args = list(args)
    before = project.state()
    op.live_before = live_of(before)
    op.slots_before = slot_versions(before)
    reader = PhaseReader()
    op.phases = reader.phases

    def on_line(line: str, now: float) -> None:
        op.output.append(line)
        reader.feed(line, now)

    op.start = time.monotonic()
    ran = project.fab(*args, check=None, timeout=timeout, on_line=on_line, merge_stderr=True)
    op.end = time.monotonic()
    op.rc = ran.returncode
    op.live_after = live_of(project.state())
    return op


# --------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------
def plan_ops(n: int) -> list[Op]:
    """N operations: CYCLE repeated, each deploy with a new version (v2, v3, ...)."""
    ops: list[Op] = []
    nxt = 2
    for i in range(n):
        kind = CYCLE[i % len(CYCLE)]
        version = ""
        if kind.startswith("deploy"):
            version = f"v{nxt}" + ("-unhealthy" if kind == "deploy-unhealthy" else "")
            nxt += 1
        ops.append(Op(i + 1, kind, version))
    return ops




def fab_args(op: Op, artifacts: dict[str, Path]) -> list[str]:
    who = ["--who", f"bench:op{op.index}"]
    if op.kind == "deploy":
        return ["deploy", "--artifact", str(artifacts[op.version]), "--version", op.version,
                *who]
    if op.kind == "deploy-unhealthy":
        # /health answers 500 at once; no need to wait the whole health.timeout for that
        return ["deploy", "--artifact", str(artifacts[op.version]), "--version", op.version,
                "--set", "health.timeout=1.5", *who]
    return [op.kind, *who]




# --------------------------------------------------------------------------------------
# one mode's run
# --------------------------------------------------------------------------------------
@dataclass
class ModeRun:
    mode: str
    result: LoadResult
    ops: list[Op]
    setup: Op
    expected_versions: list[str]
    nginx_errors: list[str]  # the router's error lines (haproxy: its alerts and the
    # servers' retry/redispatch/error counters: what a retry may have hidden)
    workdir: str
    stopped_early: bool = False
    nginx_reloads: int = 0  # reloads while the load ran (from the router's own log)
    analysis: dict[str, Any] = field(default_factory=dict)
    # what the router rendered after the setup deploy: lua | reload | haproxy (for the
    # auto classes, what auto chose)
    chosen_mode: str = ""

    @property
    def failed(self) -> int:
        return self.result.failed

    @property
    def ops_as_expected(self) -> bool:
        return all(op.as_expected for op in self.ops) and not self.stopped_early

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out.update({
            "mode": self.mode,
            "ops": [op.to_dict() for op in self.ops],
            "setup": self.setup.to_dict(),
            "expected_versions": self.expected_versions,
            "nginx_error_log": self.nginx_errors[-50:],
            "workdir": self.workdir,
            "stopped_early": self.stopped_early,
            "analysis": self.analysis,
            "chosen_mode": self.chosen_mode,
        })
        return out


def run_bluegreen(
    mode: str = "lua",
    *,
    ops: int = 24,
    workdir: Path | None = None,
    warmup: float = 3.0,
    cooldown: float = 3.0,
    interval: float = 0.0,
    mix: dict[str, ClassConfig] | None = None,
    nginx_workers: int = 2,
    drain_timeout: float = 30.0,
    deadline: float | None = None,
    slow_seconds: float = 1.5,
    progress: Callable[[str], None] | None = print,
) -> ModeRun:
    """Set everything up, run OPS `fab` operations in a row under load, tear down, analyse.

    ``deadline`` (seconds from the start of the load) stops issuing operations once passed,
    so a test stays bounded even if every operation became slow; the run then reports
    ``stopped_early``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    say = progress or (lambda _msg: None)
    ops = max(1, min(ops, MAX_OPS))
    workdir = workdir or REPO / ".run" / "bench" / f"zero-downtime-{int(time.time())}" / mode
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    plan = plan_ops(ops)
    artifacts = build_artifacts(workdir / "dist",
                                ["v1", *(op.version for op in plan if op.version)])
    nginx = PrivateNginx(workdir / "nginx", lua=mode in ("lua", *AUTO_MODES),
                         worker_processes=nginx_workers, main_extra=NGINX_MAIN_EXTRA)
    # drain_timeout: longer than any request we promise to keep (the long requests),
    # shorter than worker_shutdown_timeout (60 s) so old workers never outlive the drain.
    # GRACEFUL=0: the demo app dies at once on SIGTERM (like a default Spring Boot app),
    # so only the orchestrator's drain can keep in-flight requests alive.
    common: dict[str, Any] = dict(keep_releases=6, app_env={"GRACEFUL": "0"},
                                  health_timeout=10.0, stop_timeout=5,
                                  drain_timeout=drain_timeout)
    front: Front
    if mode == "haproxy":
        # the nginx stays unstarted: its section in bluegreen.toml is unused
        hap = PrivateHaproxy(workdir / "haproxy", include_dir=True)
        project: Project = HaproxyProject(workdir / "project", nginx, artifacts, haproxy=hap,
                                          **common).write()
        front = HaproxyFront(hap)
    elif mode in AUTO_MODES:
        project, front = auto_project(mode, workdir, nginx, artifacts, common)
    else:
        project = Project(workdir / "project", nginx, artifacts, mode=mode, **common).write()
        front = NginxFront(nginx)
    gen: LoadGen | None = None
    result: LoadResult | None = None
    done: list[Op] = []
    stopped_early = False
    setup = Op(0, "deploy", "v1")
    err_offset = 0
    chosen = ""
    try:
        front.start()
        # the first deploy installs the rendered file (one reload, in every mode): before
        # the load starts, because a first install is not what is measured here
        run_op(project, setup, *fab_args(setup, artifacts), timeout=drain_timeout + 90)
        if not setup.ok:
            raise RuntimeError("setup deploy failed:\n" + "\n".join(setup.output[-30:]))
        chosen = front.chosen_mode(project)
        if mode in AUTO_MODES:
            say(f"[{mode}] nginx.mode is not set: auto chose {chosen} (this nginx loads "
                "ngx_http_lua_module)")
        err_offset = front.log_size()
        budget = warmup + cooldown + ops * (drain_timeout + 15) + 30
        gen = LoadGen(front.url(), mix=mix, label=f"bluegreen-{mode}",
                      slow_seconds=slow_seconds, max_duration=min(budget, 900.0),
                      verify=front.verify).start()
        say(f"[{mode}] load running against {front.url()}; warmup {warmup:g}s, then "
            f"{ops} operations in a row")
        gen.wait(warmup)
        load_t0 = time.monotonic()
        for op in plan:
            run_op(project, op, *fab_args(op, artifacts), timeout=drain_timeout + 90)
            done.append(op)
            say(f"[{mode}] {op_line(op)}")
            if not gen.running or (deadline is not None
                                   and time.monotonic() - load_t0 > deadline):
                # a time bound hit: stop operating, report what we have (and say so)
                stopped_early = op is not plan[-1]
                break
            if interval:
                gen.wait(interval)
        gen.wait(cooldown)
    finally:
        if gen is not None:
            windows = [w for op in done if (w := op.switch_window()) is not None]
            result = gen.stop(windows=windows)
            front.snapshot()  # the router's counters, before anything is stopped
        project.stop_everything()
        front.stop()
    assert result is not None
    errors, reloads = front.errors_and_reloads(err_offset)
    expected = collapse([setup.live_after.split()[-1],
                         *(op.live_after.split()[-1] for op in done if op.live_after != "-")])
    run = ModeRun(mode, result, done, setup, expected, errors, str(workdir), stopped_early,
                  nginx_reloads=reloads, chosen_mode=chosen)
    result.meta.update({"mode": mode, "ops": len(done)})
    run.analysis = analyse(run)
    return run


# --------------------------------------------------------------------------------------
# the router in front: nginx or haproxy
# --------------------------------------------------------------------------------------
class Front(ABC):
    """What the run needs of the router in front of the slots."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def url(self) -> str: ...

    # what the load client checks the front door's certificate against (https only)
    verify: bool | str = True

    @abstractmethod
    def chosen_mode(self, project: Project) -> str:
        """lua | reload | haproxy: how this router switches, read from what was rendered."""

    @abstractmethod
    def log_size(self) -> int: ...

    def snapshot(self) -> None:  # noqa: B027 - optional: only haproxy has counters to read
        """Read what must be read while it still runs (called before the slots stop)."""

    @abstractmethod
    def errors_and_reloads(self, offset: int) -> tuple[list[str], int]:
        """Error lines since `offset`, and how many reloads happened."""


class NginxFront(Front):
    def __init__(self, nginx: PrivateNginx) -> None:
        self.nginx = nginx

    def start(self) -> None:
        self.nginx.start()

    def stop(self) -> None:
        self.nginx.stop()

    def url(self) -> str:
        return self.nginx.url()

    def log_size(self) -> int:
        return self.nginx.error_log_size()

    def chosen_mode(self, project: Project) -> str:
        # the lua template's control location; bluegreen.render reads it the same way
        text = (self.nginx.conf_dir / f"{project.app}.conf").read_text()
        return "lua" if is_lua_config(text) else "reload"

    def errors_and_reloads(self, offset: int) -> tuple[list[str], int]:
        text = self.nginx.error_log_since(offset)
        errors = [ln for ln in text.splitlines()
                  if any(f"[{lvl}]" in ln for lvl in ("error", "crit", "alert", "emerg"))]
        # every `nginx -s reload` logs this notice once: lua mode must switch with none
        return errors, sum(1 for ln in text.splitlines() if "(SIGHUP) received" in ln)


class HaproxyFront(Front):
    """haproxy retries what never reached an app and re-sends a GET the app closed on
    (retry-on conn-failure empty-response): a client never sees those, so the counters
    that count them (failed connects, failed responses, retries, redispatches) are the
    twin of nginx's [error] lines, read before the slots stop."""

    COUNTERS = ("econ", "eresp", "wretr", "wredis")

    def __init__(self, hap: PrivateHaproxy) -> None:
        self.hap = hap
        self.counter_lines: list[str] = []
        self.log_end: int | None = None  # stopping haproxy logs an [ALERT] of its own

    def start(self) -> None:
        self.hap.start()

    def stop(self) -> None:
        self.hap.stop()

    def url(self) -> str:
        return self.hap.url()

    def log_size(self) -> int:
        return self.hap.log_size()

    def chosen_mode(self, project: Project) -> str:
        return "haproxy"

    def snapshot(self) -> None:
        from bluegreen.routers import haproxy_api as api

        self.log_end = self.hap.log_size()
        try:
            stats = api.parse_show_stat(self.hap.cli("show stat demo 4 -1"), "demo")
        except (OSError, api.HaproxyError) as exc:
            self.counter_lines = [f"show stat failed: {exc}"]
            return
        self.counter_lines = [
            f"server {st.server}: " + " ".join(f"{k}={getattr(st, k)}" for k in self.COUNTERS)
            for st in stats if any(getattr(st, k) for k in self.COUNTERS)]

    def errors_and_reloads(self, offset: int) -> tuple[list[str], int]:
        text = self.hap.log_since(offset, self.log_end)
        # (a server going DOWN is not an error here: an idle slot's server may be checked
        # while its app is stopped; what matters is a request that met one, counted below)
        alerts = [ln for ln in text.splitlines() if "[ALERT]" in ln]
        # the master logs one "New worker ... forked" per reload: switches must cause none
        return alerts + self.counter_lines, sum(1 for ln in text.splitlines()
                                                if "New worker" in ln)


class TlsNginxFront(NginxFront):
    """nginx behind the user's own TLS server block (include-only): the load client goes
    through https and checks the self-signed certificate."""

    def __init__(self, nginx: PrivateNginx, cert: Cert, port: int, app: str) -> None:
        super().__init__(nginx)
        self.cert, self.port, self.app = cert, port, app
        self.verify = str(cert.cert)

    def start(self) -> None:
        self.nginx.start()
        # the user's server block includes bluegreen's snippets, which the first deploy
        # writes: nginx reads this file at that deploy's reload, not before
        self.nginx.write_conf_d("site.conf",
                                user_tls_server(self.nginx.conf_dir / self.app, self.cert,
                                                self.port))

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def auto_project(mode: str, workdir: Path, nginx: PrivateNginx, artifacts: dict[str, Path],
                 common: dict[str, Any]) -> tuple[Project, Front]:
    """A project whose bluegreen.toml never sets nginx.mode, so `auto` decides; with
    `include-tls` bluegreen renders only its pieces, which the user's TLS server includes
    (README, include-only), and checks each switch through that https front door."""
    # mode="lua" only so that the project gets a free control port (the default port may
    # be taken by another run on this machine); the mode key itself is dropped
    project = Project(workdir / "project", nginx, artifacts, mode="lua", **common).write()
    toml = project.dir / "bluegreen.toml"
    drop_nginx_keys(toml, "mode")
    if mode == "default":
        return project, NginxFront(nginx)
    cert = make_cert(workdir / "tls")
    port = free_port()
    set_nginx_keys(toml, **include_tls_keys(cert, port))
    return project, TlsNginxFront(nginx, cert, port, project.app)


def op_line(op: Op) -> str:
    res = "ok" if op.ok else f"FAILED rc={op.rc}"
    if not op.as_expected:
        res += " (UNEXPECTED)"
    elif not op.ok:
        res += " (expected: refused)"
    phases = " ".join(f"{p.name}={p.seconds:.3f}" for p in op.phases
                      if p.name not in ("lock", "unlock", "inspect", "state"))
    name = f"{op.kind} {op.version}".strip()
    return (f"op {op.index:>2} {name:<29} {res:<30} {op.wall:5.2f}s  "
            f"live {op.live_before} -> {op.live_after}  [{phases}]")



# --------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------
def _ms(x: float) -> float:
    return round(x * 1000.0, 1)


def drain_evidence(op: Op, slow: Sequence[Record], prev_switch_end: float | None
                   ) -> dict[str, Any]:
    """What the first stop phase (drain + stop of the replaced slot) waited for.

    The slot's version before the op tells which long requests went to it: those in
    flight when the drain began must all end (successfully) before the slot is stopped.
    """
    stop = op.phase("stop")
    if stop is None or not stop.end:
        return {}
    m = SLOT_IN_DETAIL.search(stop.detail)
    slot = m["slot"] if m else ""
    version = op.slots_before.get(slot, "")
    # a failed request carries no version (nginx's 502 page has none): count it as the
    # drained slot's when it straddles the drain start, so a drain that did NOT wait
    # shows up here as failed long requests instead of vanishing from the evidence
    mine = [r for r in slow if version and (r.version == version or not (r.ok or r.version))]
    in_flight = [r for r in mine if r.start < stop.start < r.end]
    late = max((r.end for r in in_flight), default=0.0)
    return {
        "slot": slot,
        "version": version,
        "stop_s": round(stop.seconds, 3),
        # how long after the previous switch took traffic off this slot its drain began:
        # long requests started before that switch can only still be in flight when this
        # is shorter than their length (fab's own start-up is most of it)
        "drain_began_after_prev_switch_s": (round(stop.start - prev_switch_end, 3)
                                            if prev_switch_end is not None else None),
        "outcome": stop.note,
        "long_in_flight_at_drain_start": len(in_flight),
        "long_failed_in_flight": sum(1 for r in in_flight if not r.ok),
        # < 0: the last of them had its answer before the stop phase ended
        "last_long_end_minus_stop_end_ms": _ms(late - stop.end) if in_flight else None,
        # what fab said was cut when a drain timeout expired. Two different messages:
        # the lua counter drain ("requests still in flight": real requests), and the
        # connection-count drain ("connections cut") that runs after it on the app host
        "requests_cut_reported": [ln.strip() for ln in op.output
                                  if "drain timeout" in ln and "requests still" in ln],
        "connections_cut_reported": [ln.strip() for ln in op.output
                                     if "drain timeout" in ln and "connections cut" in ln],
    }


def analyse(run: ModeRun) -> dict[str, Any]:
    res = run.result
    slow = [r for r in res.records if r.cls == SLOW]
    op_windows = [(op.start, op.end) for op in run.ops]
    steady_excl = [(op.start, op.end + SWITCH_TAIL) for op in run.ops]
    switch_windows = [w for op in run.ops if (w := op.switch_window()) is not None]
    sw = res.latency(switch_windows, inside=True)
    during = res.latency(op_windows, inside=True)
    steady = res.latency(steady_excl, inside=False)
    failed = [r for r in res.records if not r.ok]
    prev_switch_end: float | None = None
    for op in run.ops:
        op.drain = drain_evidence(op, slow, prev_switch_end)
        sw_phase = op.phase("switch")
        if sw_phase is not None and sw_phase.end:
            prev_switch_end = sw_phase.end
        win = op.switch_window()
        # which operation a failure belongs to: the switch (plus its tail) it overlaps
        op.failed_near_switch = (sum(1 for r in failed if r.start <= win[1] and r.end >= win[0])
                                 if win is not None else 0)
    switch_moments = [(op.phase("switch").start, op.phase("switch").end)  # type: ignore[union-attr]
                      for op in run.ops if op.switch_window() is not None]
    across_switch = [r for r in slow
                     if any(r.start < s0 and r.end > s1 for s0, s1 in switch_moments)]
    overlapping_ops = [r for r in slow
                       if any(r.start <= e and r.end >= s for s, e in op_windows)]
    drained = [op.drain for op in run.ops if op.drain.get("long_in_flight_at_drain_start")]
    by_kind: dict[str, list[float]] = {}
    for op in run.ops:
        by_kind.setdefault(op.kind, []).append(op.wall)
    observed = res.stable_versions()
    return {
        "latency_ms": {
            "switch": {"p50": sw[0], "p99": sw[1], "n": sw[2]},
            "during_ops": {"p50": during[0], "p99": during[1], "n": during[2]},
            "steady": {"p50": steady[0], "p99": steady[1], "n": steady[2]},
        },
        "long_requests": {
            "total": len(slow),
            "overlapping_ops": len(overlapping_ops),
            "in_flight_across_a_switch": len(across_switch),
            "failed": sum(1 for r in slow if not r.ok),
        },
        "failed_in_switch_windows": sum(
            1 for r in failed if any(r.start <= e and r.end >= s for s, e in switch_windows)),
        "drains_that_waited": len(drained),
        "fab_reported_requests_cut": sum(len(op.drain.get("requests_cut_reported", []))
                                         for op in run.ops),
        "fab_reported_connections_cut": sum(len(op.drain.get("connections_cut_reported", []))
                                            for op in run.ops),
        "stop_phase_s": [op.drain["stop_s"] for op in run.ops if op.drain],
        "wall_s_by_kind": {k: {"n": len(v), "mean": round(sum(v) / len(v), 3),
                               "max": round(max(v), 3)} for k, v in by_kind.items()},
        "versions_observed": observed,
        "versions_expected": run.expected_versions,
        "versions_match": observed == run.expected_versions,
        "ops_as_expected": run.ops_as_expected,
        "nginx_error_lines": len(run.nginx_errors),
        "nginx_reloads_during_load": run.nginx_reloads,
    }


def report(run: ModeRun) -> str:
    """The human-readable block for one mode."""
    a = run.analysis
    router = {"haproxy": "traffic.router=haproxy",
              "default": f"nginx.mode unset (auto chose {run.chosen_mode})",
              "include-tls": f"include-only behind an https server, nginx.mode unset (auto "
                             f"chose {run.chosen_mode})"}.get(run.mode, f"nginx.mode={run.mode}")
    what = "haproxy" if run.mode == "haproxy" else "nginx"
    lines = [f"=== bluegreen {router}: {len(run.ops)} operations via `fab`",
             run.result.summary()]
    lat = a["latency_ms"]
    for key in ("switch", "during_ops", "steady"):
        v = lat[key]
        lines.append(f"  latency {key:<11} p50={v['p50']:.1f}ms p99={v['p99']:.1f}ms "
                     f"(n={v['n']})")
    lr = a["long_requests"]
    lines.append(f"  long requests: {lr['total']} total, {lr['overlapping_ops']} overlapping "
                 f"an operation, {lr['in_flight_across_a_switch']} in flight across a switch, "
                 f"{lr['failed']} failed")
    lines.append(f"  versions expected ({len(a['versions_expected'])}): "
                 f"{' > '.join(a['versions_expected'])}")
    lines.append(f"  versions observed match: {a['versions_match']}")
    lines.append(f"  failed requests overlapping a switch window: {a['failed_in_switch_windows']}"
                 f" of {run.result.failed}")
    lines.append("  operations (wall time, result, phases in s):")
    lines.extend(f"    {op_line(op)}" + (f"  FAILED NEAR SWITCH: {op.failed_near_switch}"
                                           if op.failed_near_switch else "")
                 for op in run.ops)
    for kind, v in a["wall_s_by_kind"].items():
        lines.append(f"  {kind:<17} n={v['n']:<3} wall mean {v['mean']:.2f}s max {v['max']:.2f}s")
    lines.append("  drains (stop phase = drain + TERM + port free) of a slot that had long "
                 "requests in flight:")
    for op in run.ops:
        d = op.drain
        if d.get("long_in_flight_at_drain_start"):
            lines.append(
                f"    op {op.index:>2} {op.kind:<8} slot {d['slot']} ({d['version']}): drain "
                f"began {d['drain_began_after_prev_switch_s'] or 0:.2f}s after the switch away, "
                f"stop {d['stop_s']:.3f}s, {d['long_in_flight_at_drain_start']} long "
                f"request(s) in flight at drain start, {d['long_failed_in_flight']} failed, "
                "last answered "
                f"{-d['last_long_end_minus_stop_end_ms']:.0f} ms before the stop phase ended")
    idle = [op.drain["stop_s"] for op in run.ops
            if op.drain and not op.drain.get("long_in_flight_at_drain_start")]
    if idle:
        lines.append(f"    stop phases with nothing in flight: {len(idle)}, max "
                     f"{max(idle):.3f}s")
    lines.append(f"  fab's drain reports: 'requests still in flight' (lua counter timeout) "
                 f"{a['fab_reported_requests_cut']}x, 'connections cut' "
                 f"{a['fab_reported_connections_cut']}x")
    if run.chosen_mode == "lua" and a["fab_reported_connections_cut"]:
        # measured, not assumed: every request succeeded and the counter had reached 0
        lines.append("    (lua mode: those 'connections' are nginx's idle upstream keep-alive "
                     "connections to the drained slot, counted by the connection drain that "
                     "still runs after the counter drain; no request was on them: "
                     f"{run.result.failed} requests failed)")
    lines.append(f"  {what} reloads while the load ran: {run.nginx_reloads} (switches: "
                 f"{sum(1 for op in run.ops if op.switch_window() is not None)})")
    if run.nginx_errors:
        lines.append(f"  {what} errors during the load: {len(run.nginx_errors)} line(s), "
                     "last ones:")
        lines.extend(f"    {ln[-200:]}" for ln in run.nginx_errors[-5:])
    elif run.mode == "haproxy":
        lines.append("  haproxy during the load: no [ALERT], and no failed connect, failed "
                     "response, retry or redispatch on any server")
    else:
        lines.append("  nginx error log during the load: no [error]/[crit]/[alert] lines")
    if run.stopped_early:
        lines.append("  WARNING: the load hit its time bound; fewer operations ran")
    return "\n".join(lines)


