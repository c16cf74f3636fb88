"""Measure what switching does to live traffic on THIS nginx, one mode per run.

Every run: a private nginx (2 workers) on loopback, the demo app in two slots with
GRACEFUL=0 (dies at once on SIGTERM), testkit.loadgen traffic in all four classes, then
N operations under load, then a result line. Runs are bounded (N <= 40, ~1 minute).

Modes:
  idle-reloads    both slots stay up; N switches by re-render + `nginx -s reload`,
                  alternating slots. Nothing is stopped, so every failure is the reload's
                  own doing (idle client keep-alive connections closed by old workers).
  classic-reloads same, with the classic site (proxy_pass $service_url + include).
  reload-nodrain  N back-to-back deploys (reload mode), stopping the idle slot right away
                  although old workers may still proxy long requests to it.
  reload-drain    N back-to-back deploys (reload mode), waiting for old workers to exit
                  before stopping the slot.
  lua-switches    both slots stay up; N switches through the lua control endpoint.
  lua-nodrain     N back-to-back deploys (lua mode) without draining.
  lua-drain       N back-to-back deploys (lua mode), draining on the in-flight counters.

Usage:
  .venv/bin/python -m bench.prototypes.experiment MODE [--ops 20] [--json out.json]
      [--server-directive 'lingering_close always;'] [--client-keepalive-timeout 0]
      [--workers 2] [--interval 1.0] [--nodelay-app]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.harness import (
    ClassicSwitcher,
    DemoApps,
    LuaSwitcher,
    OpRecord,
    ReloadSwitcher,
    deploy_slot,
    render,
)
from testkit import REPO
from testkit.loadgen import LoadGen, LoadResult
from testkit.nginx import PrivateNginx

MODES = ("idle-reloads", "classic-reloads", "reload-nodrain", "reload-drain",
         "lua-switches", "lua-nodrain", "lua-drain")
MAX_OPS = 40
WINDOW_TAIL = 1.0  # a switch's effects (old workers closing connections) trail it a bit


def run(mode: str, *, ops: int = 20, workers: int = 2, interval: float = 1.0,
        server_extra: list[str] | None = None, client_keepalive_timeout: str = "75s",
        workdir: Path | None = None, nodelay_app: bool = False,
        drain_timeout: float = 30.0, warmup: float = 2.0) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    ops = min(ops, MAX_OPS)
    workdir = workdir or REPO / ".run" / "bench" / f"{mode}-{int(time.time())}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    lua = mode.startswith("lua")
    main_extra = render("main.conf.j2", worker_shutdown_timeout="60s").splitlines()
    nginx = PrivateNginx(workdir / "nginx", lua=lua, worker_processes=workers,
                       main_extra=[ln for ln in main_extra if ln and not ln.startswith("#")])
    apps = DemoApps(workdir, nodelay=nodelay_app)
    blue, green = apps.slots["blue"], apps.slots["green"]
    if mode == "classic-reloads":
        switcher: Any = ClassicSwitcher(nginx, apps.slots)
    elif lua:
        switcher = LuaSwitcher(nginx, apps.slots)
    else:
        switcher = ReloadSwitcher(nginx, apps.slots, server_extra=server_extra or [],
                                  client_keepalive_timeout=client_keepalive_timeout)
    op_records: list[OpRecord] = []
    gen: LoadGen | None = None
    try:
        apps.start(blue, "v1")
        switcher.setup(blue.port)
        nginx.start()
        stays_up = mode in ("idle-reloads", "classic-reloads", "lua-switches")
        if stays_up:
            apps.start(green, "v2")
        gen = LoadGen(nginx.url(), label=mode, max_duration=170.0).start()
        gen.wait(warmup)
        live = blue
        for i in range(ops):
            target = green if live is blue else blue
            if stays_up:
                t0 = time.monotonic()
                switcher.switch(target.port)
                t1 = time.monotonic()
                op_records.append(OpRecord("switch", target.name, target.port,
                                           target.version, t0, t1, t0, t1))
                gen.wait(interval)
            else:
                rec = deploy_slot(apps, switcher, target, f"v{i + 2}",
                                  drain=mode.endswith("-drain"), drain_timeout=drain_timeout)
                op_records.append(rec)
            live = target
        gen.wait(warmup)
    finally:
        result: LoadResult | None = None
        if gen is not None:
            windows = [(r.switch_start, r.switch_end + WINDOW_TAIL) for r in op_records]
            result = gen.stop(windows=windows)
        nginx.stop()
        apps.stop_all()
    assert result is not None
    out = result.to_dict()
    out["mode"] = mode
    out["ops"] = [_op_dict(r) for r in op_records]
    out["server_extra"] = server_extra or []
    out["client_keepalive_timeout"] = client_keepalive_timeout
    out["nodelay_app"] = nodelay_app
    out["nginx_workers"] = workers
    out["error_log_alerts"] = [ln for ln in nginx.error_log_text().splitlines()
                               if "[error]" in ln or "[alert]" in ln or "[crit]" in ln][:20]
    out["summary"] = result.summary()
    out["result_line"] = result.result_line()
    out["workdir"] = str(workdir)
    return out


def _op_dict(rec: OpRecord) -> dict[str, Any]:
    d = asdict(rec)
    d["duration"] = round(rec.end - rec.start, 3)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--ops", type=int, default=20, help=f"operations (max {MAX_OPS})")
    parser.add_argument("--workers", type=int, default=2, help="nginx worker_processes")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between switches in the *-reloads/-switches modes")
    parser.add_argument("--server-directive", action="append", default=[],
                        help="extra directive in the reload-mode server block (repeatable)")
    parser.add_argument("--client-keepalive-timeout", default="75s",
                        help="keepalive_timeout of the reload-mode server block")
    parser.add_argument("--nodelay-app", action="store_true",
                        help="patch the demo app with TCP_NODELAY (see harness.DemoApps)")
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args(argv)
    out = run(args.mode, ops=args.ops, workers=args.workers, interval=args.interval,
              server_extra=args.server_directive,
              client_keepalive_timeout=args.client_keepalive_timeout,
              nodelay_app=args.nodelay_app)
    print(out["summary"])
    ops = out["ops"]
    if ops:
        drains = [o["drain"] for o in ops if o.get("drain")]
        mean = sum(o["duration"] for o in ops) / len(ops)
        line = f"  ops: {len(ops)} x {ops[0]['op']}, mean {mean:.2f}s"
        if drains:
            line += (f", drain waited max {max(d['waited'] for d in drains):.2f}s,"
                     f" not drained {sum(1 for d in drains if not d['drained'])}")
        print(line)
    for line in out["error_log_alerts"][:5]:
        print("  nginx:", line[:160])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(out["result_line"])
    return 0 if out["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
