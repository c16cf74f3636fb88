"""Shared benchmark plumbing: private nginx, demo-app slots, switch modes, drain.

Everything runs on loopback under one work directory and is stopped by PID (through
testkit.procs). Three switch modes share one small interface so the benchmark
and the prototypes drive them the same way:

  ClassicSwitcher  bench/classic/*.sh: tee the include file + `nginx -s reload`
  ReloadSwitcher   render bench/prototypes/reload.conf.j2, `nginx -t`, atomic rename,
                   `nginx -s reload`; drain = wait until no old ("shutting down") worker
                   is left, since only old workers can still proxy to the old slot
  LuaSwitcher      render bench/prototypes/lua.conf.j2 once; a switch rewrites the file
                   (the persistent truth) and POSTs the live port to the control
                   listener, no reload; drain = poll the per-port in-flight counters

A deploy of one slot (``deploy_slot``) is what the orchestrator does: drain the idle slot,
stop it, start the new version there, wait until healthy, switch to it.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jinja2
import requests

from testkit import REPO
from testkit.demo import build
from testkit.nginx import PrivateNginx
from testkit.ports import free_port, wait_port
from testkit.procs import log_tail, pid_alive, start_process, stop_pid, wait_until

BENCH = REPO / "bench"
PROTOTYPES = BENCH / "prototypes"
CLASSIC = BENCH / "classic"


def established_to(port: int, host: str = "127.0.0.1") -> int:
    """ESTABLISHED TCP connections whose remote end is host:port (nginx -> app), via
    /proc/net/tcp so it costs no subprocess. Used to show what a drain waited for."""
    want = f"{_hex_ip(host)}:{port:04X}"
    count = 0
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return -1
    for line in lines:
        parts = line.split()
        if len(parts) > 3 and parts[2] == want and parts[3] == "01":
            count += 1
    return count


def _hex_ip(host: str) -> str:
    a, b, c, d = (int(x) for x in host.split("."))
    return f"{d:02X}{c:02X}{b:02X}{a:02X}"  # /proc/net/tcp is little-endian


# --------------------------------------------------------------------------------------
# demo app slots
# --------------------------------------------------------------------------------------
@dataclass
class Slot:
    name: str
    port: int
    pid: int | None = None
    version: str = ""


class DemoApps:
    """Builds demo releases and runs them in two slots, GRACEFUL=0 by default (the app
    dies at once on SIGTERM, so only the orchestrator's drain can protect requests)."""

    def __init__(self, workdir: Path, ports: tuple[int, int] | None = None,
                 *, graceful: bool = False, nodelay: bool = False) -> None:
        self.workdir = workdir
        self.graceful = graceful
        # nodelay: patch the unpacked app.py with TCP_NODELAY. The demo app writes headers
        # and body in two send()s; on a reused connection Nagle + delayed ACK then hold
        # the body ~40 ms. Through nginx's upstream keep-alive pool every request pays it
        # (p50 44 ms instead of ~4 ms). Experiments only, until the app sets it itself.
        self.nodelay = nodelay
        p = ports or (free_port(), free_port())
        self.slots = {"blue": Slot("blue", p[0]), "green": Slot("green", p[1])}
        (workdir / "releases").mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def release(self, version: str) -> Path:
        """The demo app at VERSION (testkit.demo), unpacked under releases/VERSION (cached)."""
        target = self.workdir / "releases" / version
        if (target / "bin" / "runner").exists():
            return target
        tarball = build(version, self.workdir / "dist")
        tmp = target.with_name(version + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        if self.nodelay:
            app = tmp / "app.py"
            text = app.read_text()
            marker = '    server_version = "bluegreen-demo"\n'
            if "disable_nagle_algorithm" not in text and marker in text:
                app.write_text(text.replace(
                    marker, marker + "    disable_nagle_algorithm = True\n", 1))
        tmp.rename(target)
        return target

    def env(self, slot: Slot) -> dict[str, str]:
        return {**os.environ, "GRACEFUL": "1" if self.graceful else "0",
                "BLUEGREEN_SLOT": slot.name}

    def start(self, slot: Slot, version: str, *, health_timeout: float = 15.0) -> float:
        """Start VERSION in SLOT and wait until /health answers 200; returns seconds."""
        t0 = time.monotonic()
        release = self.release(version)
        log = self.workdir / "logs" / f"app-{slot.port}.log"
        proc = start_process([str(release / "bin" / "runner"), str(slot.port)], log,
                             env=self.env(slot), cwd=release)
        slot.pid, slot.version = proc.pid, version
        wait_healthy(slot.port, health_timeout, alive=lambda: pid_alive(proc.pid),
                     describe=lambda: log_tail(log))
        return time.monotonic() - t0

    def stop(self, slot: Slot) -> None:
        """SIGTERM by PID (GRACEFUL=0: the app dies at once), bounded."""
        if slot.pid is not None:
            stop_pid(slot.pid, timeout=5.0)
        slot.pid, slot.version = None, ""

    def stop_all(self) -> None:
        for slot in self.slots.values():
            self.stop(slot)


def wait_healthy(port: int, timeout: float, *, alive: Any = None, describe: Any = None) -> None:
    """Poll GET /health on the slot directly every 20 ms, bounded by ``timeout``."""
    wait_port("127.0.0.1", port, timeout, alive=alive, describe=describe)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"slot on port {port} not healthy in {timeout}s")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------
# switch modes
# --------------------------------------------------------------------------------------
@dataclass
class DrainReport:
    port: int
    waited: float
    drained: bool  # False: the drain timeout expired and the slot is stopped anyway
    inflight_left: int  # requests still in flight when the wait ended (lua mode), else -1
    connections_left: int  # ESTABLISHED nginx->slot connections when the wait ended
    polls: int = 0


class Switcher(Protocol):
    nginx: PrivateNginx

    def setup(self, live_port: int) -> None: ...
    def switch(self, port: int) -> None: ...
    def drain(self, port: int, timeout: float) -> DrainReport: ...


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(PROTOTYPES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # nginx config, not HTML  # noqa: S701
)


def render(template: str, **ctx: Any) -> str:
    return _ENV.get_template(template).render(**ctx)


def write_atomic(path: Path, text: str) -> None:
    """Write a sibling temp file and rename it over ``path``: readers (nginx) never see
    a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_old_workers_gone(nginx: PrivateNginx, port: int, timeout: float) -> DrainReport:
    """Reload-mode drain: the slot we are about to stop is idle in the current config, so
    only workers of older generations ("shutting down") can still hold requests to it.
    Wait until none is left (they exit once their in-flight requests finish)."""
    t0 = time.monotonic()
    polls = 0
    while True:
        polls += 1
        old = [p for p in nginx.worker_pids()
               if p not in nginx.worker_pids(include_shutting_down=False)]
        if not old:
            return DrainReport(port, time.monotonic() - t0, True, -1, established_to(port), polls)
        if time.monotonic() - t0 > timeout:
            return DrainReport(port, time.monotonic() - t0, False, -1,
                               established_to(port), polls)
        time.sleep(0.02)


class ReloadSwitcher:
    """Tuned reload mode: the live port is rendered into the upstream, then reload."""

    template = "reload.conf.j2"

    def __init__(self, nginx: PrivateNginx, slots: dict[str, Slot], name: str = "demo",
                 **ctx: Any) -> None:
        self.nginx = nginx
        self.slots = slots
        self.name = name
        self.ctx = ctx
        self.path = nginx.conf_dir / f"{name}.conf"

    def _ctx(self, live_port: int) -> dict[str, Any]:
        live = next(s for s in self.slots.values() if s.port == live_port)
        return {"name": self.name, "listen": f"127.0.0.1:{self.nginx.port}",
                "live_port": live_port, "live_slot": live.name,
                "slots": {s.name: s.port for s in self.slots.values()}, **self.ctx}

    def _render(self, live_port: int) -> str:
        ctx = self._ctx(live_port)
        text = render(self.template, **ctx)
        # experiments only (experiment.py --server-directive): extra directives right
        # after the server's listen line; the recommended template stays untouched
        extra = ctx.get("server_extra") or []
        if extra:
            lines = text.splitlines(keepends=True)
            at = next(i for i, ln in enumerate(lines) if ln.startswith("    listen "))
            lines[at + 1:at + 1] = [f"    {d}  # experiment\n" for d in extra]
            text = "".join(lines)
        return text

    def setup(self, live_port: int) -> None:
        write_atomic(self.path, self._render(live_port))

    def switch(self, port: int) -> None:
        old = self.path.read_text()
        write_atomic(self.path, self._render(port))
        try:
            self.nginx.test_config()  # nginx -t on the whole config before any reload
            self.nginx.reload(wait=True)
        except Exception:
            write_atomic(self.path, old)  # put the old file back, as the core must
            raise

    def drain(self, port: int, timeout: float) -> DrainReport:
        return _wait_old_workers_gone(self.nginx, port, timeout)


class ClassicSwitcher(ReloadSwitcher):
    """bench/classic/switch.sh: tee the include file, `nginx -s reload`, nothing else."""

    def __init__(self, nginx: PrivateNginx, slots: dict[str, Slot], name: str = "classic",
                 **ctx: Any) -> None:
        super().__init__(nginx, slots, name, **ctx)
        self.include = nginx.prefix / "service_url.inc"

    def setup(self, live_port: int) -> None:
        self.include.write_text(f"set $service_url http://127.0.0.1:{live_port};\n")
        site = (CLASSIC / "site.conf").read_text()
        site = site.replace("@LISTEN@", f"127.0.0.1:{self.nginx.port}")
        site = site.replace("@INCLUDE_FILE@", str(self.include))
        self.path.write_text(site)

    def script_env(self) -> dict[str, str]:
        return {**os.environ, "INCLUDE_FILE": str(self.include),
                "NGINX_ARGS": " ".join(self.nginx.base_args[1:]),
                "NGINX_BIN": self.nginx.base_args[0]}

    def switch(self, port: int) -> None:
        import subprocess

        subprocess.run([str(CLASSIC / "switch.sh"), str(port)], env=self.script_env(),
                       check=True, capture_output=True, timeout=30)

    def drain(self, port: int, timeout: float) -> DrainReport:
        # the classic pattern does not drain at all: report what it would have cut
        return DrainReport(port, 0.0, False, -1, established_to(port), 0)


class LuaSwitcher:
    """No-reload mode: balancer_by_lua reads the live port from a lua_shared_dict."""

    template = "lua.conf.j2"

    def __init__(self, nginx: PrivateNginx, slots: dict[str, Slot], name: str = "demo",
                 control_port: int | None = None, **ctx: Any) -> None:
        self.nginx = nginx
        self.slots = slots
        self.name = name
        self.ctx = ctx
        self.control_port = control_port or free_port()
        self.path = nginx.conf_dir / f"{name}.conf"
        self.control = f"http://127.0.0.1:{self.control_port}"
        self.session = requests.Session()
        self.session.trust_env = False

    def _ctx(self, live_port: int) -> dict[str, Any]:
        live = next(s for s in self.slots.values() if s.port == live_port)
        return {"name": self.name, "listen": f"127.0.0.1:{self.nginx.port}",
                "control_listen": f"127.0.0.1:{self.control_port}",
                # grows with every rendering: a reload adopts the file's live port only
                # when the file is newer than what the shared zone was last set from
                "generation": time.time_ns() // 1_000_000,
                "live_port": live_port, "live_slot": live.name,
                "slots": {s.name: s.port for s in self.slots.values()}, **self.ctx}

    def setup(self, live_port: int) -> None:
        write_atomic(self.path, render(self.template, **self._ctx(live_port)))

    def status(self) -> dict[str, Any]:
        resp = self.session.get(self.control + "/bluegreen/status", timeout=2)
        resp.raise_for_status()
        return json.loads(resp.text)

    def switch(self, port: int) -> None:
        # 1. persistent truth first: a later reload/restart comes up on this port
        write_atomic(self.path, render(self.template, **self._ctx(port)))
        # 2. then the live switch, no reload: every new request goes to `port` from now on
        resp = self.session.post(f"{self.control}/bluegreen/live?port={port}", timeout=2)
        if resp.status_code != 200:
            raise RuntimeError(f"lua switch refused: {resp.status_code} {resp.text.strip()}")
        if int(self.status()["live"]) != port:
            raise RuntimeError("lua switch not applied")

    def drain(self, port: int, timeout: float, settle: float = 0.05) -> DrainReport:
        """Poll /bluegreen/status until inflight[port] is 0 twice, ``settle`` s apart.

        Two readings: a request that read the old live port in its access phase a few
        microseconds before the switch increments the counter right after; the second
        reading (and old workers of any past reload, which share the dict) covers it.
        """
        t0 = time.monotonic()
        polls = zeros = 0
        inflight = -1
        while True:
            polls += 1
            inflight = int(self.status()["inflight"].get(str(port), 0))
            zeros = zeros + 1 if inflight == 0 else 0
            if zeros >= 2:
                return DrainReport(port, time.monotonic() - t0, True, 0,
                                   established_to(port), polls)
            if time.monotonic() - t0 > timeout:
                return DrainReport(port, time.monotonic() - t0, False, inflight,
                                   established_to(port), polls)
            time.sleep(settle if inflight == 0 else 0.02)


# --------------------------------------------------------------------------------------
# one deploy of one slot, as the orchestrator does it
# --------------------------------------------------------------------------------------
@dataclass
class OpRecord:
    op: str
    slot: str
    port: int
    version: str
    start: float
    end: float
    switch_start: float
    switch_end: float
    drain: DrainReport | None = None
    phases: dict[str, float] = field(default_factory=dict)


def deploy_slot(apps: DemoApps, switcher: Switcher, slot: Slot, version: str, *,
                drain: bool = True, drain_timeout: float = 30.0) -> OpRecord:
    """Drain SLOT (idle, maybe live moments ago), stop it, start VERSION there, switch."""
    t0 = time.monotonic()
    report = switcher.drain(slot.port, drain_timeout) if drain else None
    t1 = time.monotonic()
    apps.stop(slot)
    t2 = time.monotonic()
    apps.start(slot, version)
    t3 = time.monotonic()
    switcher.switch(slot.port)
    t4 = time.monotonic()
    return OpRecord("deploy", slot.name, slot.port, version, t0, t4, t3, t4, report,
                    {"drain": t1 - t0, "stop": t2 - t1, "start_healthy": t3 - t2,
                     "switch": t4 - t3})


def wait_workers_settled(nginx: PrivateNginx, timeout: float = 30.0) -> None:
    """Bounded wait until no old-generation worker is left (between experiments)."""
    wait_until(lambda: nginx.worker_pids() == nginx.worker_pids(include_shutting_down=False),
               timeout, "old nginx workers still shutting down")
