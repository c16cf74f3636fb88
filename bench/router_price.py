"""The price of the router: throughput and p99 through bluegreen's routers against plain nginx.

Issue 9's second measurement. Every router proxies to the same kind of fast upstream (an
nginx answering `return 200` with one worker, deployed as a release by the real `fab
deploy`, so the routers run exactly the configuration bluegreen renders):

  plain    a plain nginx `proxy_pass` to an upstream with keep-alive (the baseline)
  lua      bluegreen, nginx.mode = "lua" (counting, canary and cohort lua on every request)
  reload   bluegreen, nginx.mode = "reload"
  haproxy  bluegreen, traffic.router = "haproxy"
  direct   wrk straight at the upstream, no router: shows the upstream is not the bottleneck

`plain` proxies to the lua project's live slot; each bluegreen project runs its own copy of
the same upstream (one slot per project; only one router is under load at a time).

Same offered load for everyone: `wrk -t1 -cC -dDs --latency` (a fixed number of keep-alive
connections for a fixed time; wrk cannot hold a fixed rate). Interleaved, A B A C A D:
each round runs plain, then a mode, for every mode (in an order rotated per round), and
each mode's ratio is taken against the plain run just before it; the reported ratio is
the median over rounds. On a 2-core machine every process is limited: nginx
`worker_processes 1`, haproxy `nbthread 1`, wrk one thread; by default the router under
test is pinned to CPU 1, wrk and the upstream to CPU 0 (`--no-pin`: all float).

Goal: lua and haproxy within 5 % of plain nginx (throughput >= x0.95, p99 <= x1.05).

    .venv/bin/python -m bench.router_price [--quick] [--rounds 5] [--seconds 5]
        [--connections 16] [--no-pin] [--no-attribute] [--json out.json]

`lua-bare` (skipped with --no-attribute) is priced the same way, outside the goal: plain
nginx plus the four lua handlers lua mode runs per request, doing nothing, so the line
tells the price of running lua at all from the price of bluegreen's lua code. Next to
throughput and p99, each router's own CPU time per request (from /proc): the machine's
other load moves the first two a lot, this one hardly.

The last line is the result line; exit 1 when lua or haproxy missed the goal, 2 on a
setup error (what failed, and where, on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.wrk import (
    Price,
    WrkOutputError,
    WrkRun,
    cpu_ticks,
    cpu_us_per_request,
    parse_wrk,
    price,
    rotated,
)
from testkit import REPO
from testkit.haproxy import HaproxyProject, PrivateHaproxy, main_config
from testkit.nginx import PrivateNginx, nginx_binary
from testkit.procs import child_pids, descendant_pids
from testkit.project import Project

MODES = ("lua", "reload", "haproxy")
GOAL_MODES = ("lua", "haproxy")
# --attribute: where lua mode's price comes from. `lua-bare` is the plain config plus the
# four lua handlers lua mode runs per request (balancer, access, header filter, log), each
# doing nothing but choose the peer: the price of running lua at all, before bluegreen's
# own work in them (shared-dict counting, canary, preview, maintenance)
ATTRIBUTE = ("lua-bare",)
TOLERANCE = 0.05
ROUTER_CPU, CLIENT_CPU = 1, 0  # the router gets a core; wrk and the upstream share one

# The upstream: nginx with one worker answering 200 at once, started by bluegreen as any
# release is (`{release}/bin/runner {port}`, working directory = the release directory).
RUNNER = """#!/bin/sh
# bench/router_price.py's fast upstream: nginx answering 200 on port $1, one worker; its
# files live in the release directory bluegreen starts it in. exec: one pid for the slot.
port="$1"
dir="$PWD/fast-$port"
mkdir -p "$dir/temp"
user=""
[ "$(id -u)" = 0 ] && user="user root;"
cat > "$dir/nginx.conf" <<EOF
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path $dir/temp;
    proxy_temp_path $dir/temp;
    fastcgi_temp_path $dir/temp;
    uwsgi_temp_path $dir/temp;
    scgi_temp_path $dir/temp;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:$port;
        location / {{
            add_header X-App-Version "$BLUEGREEN_VERSION";
            return 200 "ok\\n";
        }}
    }}
}}
EOF
exec {nginx} -p "$dir/" -c "$dir/nginx.conf" -e stderr -g "daemon off;"
"""

# The baseline: what a plain nginx in front of one app looks like, with the same upstream
# keep-alive as bluegreen's templates (without it, every request would pay a connect).
PLAIN_CONF = """
upstream plain_app {{
    server 127.0.0.1:{port};
    keepalive 32;
    keepalive_timeout 10s;
    keepalive_requests 1000;
}}
server {{
    listen 127.0.0.1:{listen};
    location / {{
        proxy_pass http://plain_app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
"""


BARE_LUA_CONF = """
upstream bare_app {{
    server 0.0.0.1;  # never contacted: the balancer sets the peer
    balancer_by_lua_block {{
        require("ngx.balancer").set_current_peer("127.0.0.1", {port})
    }}
    keepalive 32;
    keepalive_timeout 10s;
    keepalive_requests 1000;
}}
server {{
    listen 127.0.0.1:{listen};
    location / {{
        access_by_lua_block {{ local _ = ngx.var.uri }}
        header_filter_by_lua_block {{ local _ = ngx.status }}
        log_by_lua_block {{ local _ = ngx.status }}
        proxy_pass http://bare_app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
"""


def build_upstream(out_dir: Path, version: str = "v1") -> Path:
    """The fast upstream as a release tarball with a runner, the shape bluegreen ships."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"fast-{version}.tar.gz"
    data = RUNNER.format(nginx=shlex.quote(nginx_binary())).encode()
    with tarfile.open(target, "w:gz") as tar:
        info = tarfile.TarInfo("bin/runner")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return target


@dataclass
class Target:
    """One thing wrk is pointed at, and the processes that serve it (to pin them)."""

    name: str
    url: str
    router_pids: list[int]


def ticks_of(pids: Sequence[int]) -> int:
    """CPU clock ticks the processes have used so far (a process gone counts 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    return total


def pin(pids: Sequence[int], cpu: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(pid, {cpu})


def slot_pids(project: Project) -> list[int]:
    return [p for pid in project.slot_pids() for p in (pid, *descendant_pids(pid))]


def run_wrk(url: str, seconds: float, connections: int, cpu: int | None) -> WrkRun:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk against {url} failed (exit {out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-300:]}")
    return parse_wrk(out.stdout)


class Routers:
    """The plain nginx and the three bluegreen projects, each with its upstream deployed."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.artifacts = {"v1": build_upstream(work / "dist")}
        self.nginx = {m: PrivateNginx(work / f"nginx-{m}", lua=m in ("lua", "lua-bare"),
                                      worker_processes=1)
                      for m in ("plain", "lua", "reload", "lua-bare")}
        self.hap = PrivateHaproxy(work / "haproxy", include_dir=True)
        # one thread, as nginx gets one worker: the same share of a 2-core machine
        self.hap.write_config(main_config(self.hap.admin_socket, extra_global=["nbthread 1"]))
        self.projects: dict[str, Project] = {}
        self._started: list[PrivateNginx | PrivateHaproxy] = []

    def start(self) -> dict[str, Target]:
        common: dict[str, Any] = {"health_timeout": 10.0}
        for mode in ("lua", "reload"):
            self.projects[mode] = Project(self.work / f"project-{mode}", self.nginx[mode],
                                          self.artifacts, mode=mode, **common).write()
        # its [nginx] table is unused: that nginx is never started
        self.projects["haproxy"] = HaproxyProject(
            self.work / "project-haproxy", PrivateNginx(self.work / "nginx-unused"),
            self.artifacts, haproxy=self.hap, **common).write()
        for front in (self.nginx["lua"], self.nginx["reload"], self.hap):
            front.start()
            self._started.append(front)
        for mode, proj in self.projects.items():
            ran = proj.fab("deploy", "--artifact", str(self.artifacts["v1"]), "--version", "v1",
                           check=None, timeout=120)
            if ran.returncode != 0:
                raise RuntimeError(f"`fab deploy` of the fast upstream through {mode} failed "
                                   f"(exit {ran.returncode}) in {proj.dir}:\n"
                                   f"{(ran.stdout + ran.stderr)[-1500:]}")
        upstream = self.projects["lua"].blue  # the first deploy goes to blue
        plain = self.nginx["plain"]
        plain.write_conf_d("plain.conf", PLAIN_CONF.format(port=upstream, listen=plain.port))
        plain.start()
        self._started.append(plain)
        bare = self.nginx["lua-bare"]
        bare.write_conf_d("bare.conf", BARE_LUA_CONF.format(port=upstream, listen=bare.port))
        bare.start()
        self._started.append(bare)
        hap_pids = [p for p in (self.hap.master_pid,) if p] + (
            child_pids(self.hap.master_pid) if self.hap.master_pid else [])
        return {
            "plain": Target("plain", plain.url(), self.workers(plain)),
            "lua": Target("lua", self.nginx["lua"].url(), self.workers(self.nginx["lua"])),
            "reload": Target("reload", self.nginx["reload"].url(),
                             self.workers(self.nginx["reload"])),
            "haproxy": Target("haproxy", self.hap.url(), hap_pids),
            "lua-bare": Target("lua-bare", bare.url(), self.workers(bare)),
            # "router" here: the upstream itself, whose CPU per request is then its own
            "direct": Target("direct", f"http://127.0.0.1:{upstream}/",
                             slot_pids(self.projects["lua"])),
        }

    @staticmethod
    def workers(nginx: PrivateNginx) -> list[int]:
        """The current workers: those of the first install's reload may still be leaving."""
        return nginx.worker_pids(include_shutting_down=False)

    def upstream_pids(self) -> list[int]:
        return [p for proj in self.projects.values() for p in slot_pids(proj)]

    def close(self) -> None:
        for proj in self.projects.values():
            proj.stop_everything()
        for front in reversed(self._started):
            front.stop()


@contextlib.contextmanager
def routers(work: Path) -> Iterator[Routers]:
    r = Routers(work)
    try:
        yield r
    finally:
        r.close()


def load_now() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rounds = args.rounds if args.rounds else (2 if args.quick else 5)
    seconds = args.seconds if args.seconds else (2.0 if args.quick else 5.0)
    client_cpu = None if args.no_pin else CLIENT_CPU
    modes = (*MODES, *ATTRIBUTE) if args.attribute else MODES
    runs: dict[str, list[WrkRun]] = {name: [] for name in ("plain", *modes, "direct")}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # router CPU us per request
    pairs: dict[str, list[tuple[WrkRun, WrkRun]]] = {m: [] for m in modes}
    cpu_pairs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    loads: list[str] = [load_now()]
    with routers(work) as rig:
        targets = rig.start()
        if not args.no_pin:
            for name in ("plain", *modes):
                pin(targets[name].router_pids, ROUTER_CPU)
            pin(rig.upstream_pids(), CLIENT_CPU)
        for name in ("plain", *modes, "direct"):  # warm-up: not counted
            run_wrk(targets[name].url, 1, args.connections, client_cpu)

        tick = os.sysconf("SC_CLK_TCK")

        def one(name: str, rnd: int) -> WrkRun:
            before = ticks_of(targets[name].router_pids)
            got = run_wrk(targets[name].url, seconds, args.connections, client_cpu)
            cpu[name].append(cpu_us_per_request(ticks_of(targets[name].router_pids) - before,
                                                got.requests, tick))
            if not got.clean:
                raise RuntimeError(f"wrk through {name} ({targets[name].url}) saw "
                                   f"{got.socket_errors} socket errors and {got.non_2xx} "
                                   "non-2xx answers: the router is broken, not slow")
            runs[name].append(got)
            print(f"  round {rnd + 1}/{rounds} {name:<8} {got.rps:9.0f} req/s  p50 "
                  f"{got.p50_ms:6.3f} ms  p99 {got.p99_ms:6.3f} ms  router cpu "
                  f"{cpu[name][-1]:5.1f} us/req", flush=True)
            return got

        for r in range(rounds):
            for mode in rotated(modes, r):
                base = one("plain", r)
                pairs[mode].append((base, one(mode, r)))
                cpu_pairs[mode].append((cpu["plain"][-1], cpu[mode][-1]))
            one("direct", r)
            loads.append(load_now())
    prices = {m: price(m, pairs[m], cpu_pairs[m]) for m in modes}
    return {"rounds": rounds, "seconds": seconds, "connections": args.connections,
            "pinned": not args.no_pin, "loadavg": loads,
            "plain": {"rps": statistics.median(r.rps for r in runs["plain"]),
                      "p99_ms": statistics.median(r.p99_ms for r in runs["plain"]),
                      "cpu_us": statistics.median(cpu["plain"])},
            "direct": {"rps": statistics.median(r.rps for r in runs["direct"]),
                       "p99_ms": statistics.median(r.p99_ms for r in runs["direct"])},
            "prices": prices,
            "runs": {k: [x.to_dict() for x in v] for k, v in runs.items()}}


def result_line(res: dict[str, Any]) -> str:
    prices: dict[str, Price] = res["prices"]
    limits = ("wrk -t1 -c{connections} -d{seconds:g}s x{rounds} rounds A-B interleaved, "
              "nginx 1 worker, haproxy nbthread 1, "
              + ("router on cpu1, wrk+upstream on cpu0" if res["pinned"] else "unpinned")
              ).format(**res)
    parts = [f"router_price: plain nginx {res['plain']['rps']:.0f} req/s p99 "
             f"{res['plain']['p99_ms']:.2f}ms cpu {res['plain']['cpu_us']:.0f}us/req (upstream "
             f"direct {res['direct']['rps']:.0f} req/s);"]
    for m in prices:
        p = prices[m]
        parts.append(f"{m} {p.rps:.0f} req/s x{p.rps_ratio:.3f} p99 {p.p99_ms:.2f}ms "
                     f"x{p.p99_ratio:.3f} cpu {p.cpu_us:.0f}us/req x{p.cpu_ratio:.2f};")
    ok = all(prices[m].within(TOLERANCE) for m in GOAL_MODES)
    parts.append(f"goal lua,haproxy within {TOLERANCE:.0%}: {'MET' if ok else 'MISSED'}")
    parts.append(f"[{limits}; load {res['loadavg'][0]} .. {res['loadavg'][-1]}]")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.router_price",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s runs")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (default 5, --quick 2)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="seconds per wrk run (default 5, --quick 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    ap.add_argument("--no-pin", action="store_true", help="let every process float")
    ap.add_argument("--no-attribute", dest="attribute", action="store_false",
                    help="skip lua-bare (four lua handlers that do nothing: where lua "
                         "mode's price comes from)")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("router_price: wrk is not installed: run scripts/install-system-deps.sh "
              "(Debian package wrk)", file=sys.stderr)
        return 2
    work = REPO / ".run" / "bench" / f"router-price-{int(time.time())}"
    started = time.monotonic()
    try:
        res = measure(args, work)
    except (RuntimeError, OSError, WrkOutputError, subprocess.TimeoutExpired) as exc:
        print(f"router_price: setup or measurement failed: {exc}\n  (work directory "
              f"{work}; run again with --keep to look at the routers' logs)", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(
            {**res, "elapsed_s": round(elapsed, 1),
             "prices": {m: p.to_dict(TOLERANCE) for m, p in res["prices"].items()},
             "result": {"router_price": {m: p.to_dict(TOLERANCE)
                                         for m, p in res["prices"].items()}}},
            indent=1))
    print(f"(total {elapsed:.0f}s)")
    print(result_line(res), flush=True)
    return 0 if all(res["prices"][m].within(TOLERANCE) for m in GOAL_MODES) else 1


if __name__ == "__main__":
    sys.exit(main())
