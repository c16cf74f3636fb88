"""The baseline: the classic shell-script deploy (bench/classic/) under the same load.

A private nginx serves the classic site (``proxy_pass $service_url`` + a one-line include
file), the demo app runs with GRACEFUL=0 in one slot, testkit.loadgen sends all four
classes of traffic, and K classic deploys run back to back, alternating ports, exactly
as the Jenkins job would run bench/classic/deploy.sh: restart.sh (kill -15 the idle port,
sleep, nohup start), health.sh (sleep, curl loop), switch.sh (tee + nginx -s reload).
No drain and no ``nginx -t``, on purpose.

Library::

    from bench.classic_bench import run_classic
    result = run_classic(k=20)            # a loadgen.LoadResult; result.meta["ops"]

CLI: ``.venv/bin/python -m bench.classic_bench --deploys 20 [--json out.json]``
The fixed sleeps of the original (5 s after kill, 10 s before the first health check,
10 s between checks) are parameters, shortened by default so 20 deploys fit in about a
minute; the shape of every script is unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import CLASSIC, ClassicSwitcher, DemoApps, Slot, established_to
from testkit import REPO
from testkit.loadgen import ClassConfig, LoadGen, LoadResult
from testkit.nginx import PrivateNginx
from testkit.procs import stop_pid

MAX_DEPLOYS = 40
WINDOW_TAIL = 1.0  # the reload's effects (idle connections closed) trail the script a bit


@dataclass(frozen=True)
class ClassicParams:
    """The classic scripts' fixed waits; originals are 5 / 10 / 10 / 10."""

    stop_sleep: float = 0.5  # restart.sh: sleep after kill -15 (original 5 s)
    health_initial_sleep: float = 0.5  # health.sh: sleep before the first curl (original 10 s)
    health_interval: float = 0.5  # health.sh: sleep between curls (original 10 s)
    health_tries: int = 20  # health.sh: curls before giving up (original 10)


def _script_env(nginx: PrivateNginx, switcher: ClassicSwitcher, apps: DemoApps,
                params: ClassicParams, app_dir: Path) -> dict[str, str]:
    ports = " ".join(str(s.port) for s in apps.slots.values())
    return {
        **switcher.script_env(),
        "PORTS": ports,
        "FRONT_URL": nginx.url("").rstrip("/"),
        "APP_DIR": str(app_dir),
        "LOG_DIR": str(apps.workdir / "logs"),
        "PIDFILE_DIR": str(apps.workdir / "logs"),
        "STOP_SLEEP": str(params.stop_sleep),
        "HEALTH_INITIAL_SLEEP": str(params.health_initial_sleep),
        "HEALTH_INTERVAL": str(params.health_interval),
        "HEALTH_TRIES": str(params.health_tries),
        "GRACEFUL": "0",  # the app dies at once on SIGTERM, like a default Spring Boot app
    }


def _classic_deploy(env: dict[str, str], slot: Slot, *, guess_idle: bool,
                    timeout: float) -> dict[str, Any]:
    """Run deploy.sh once; returns timings and the script's output."""
    run_env = dict(env)
    if not guess_idle:
        run_env["IDLE_PORT"] = str(slot.port)  # deterministic; the guess is tested apart
    cut_connections = established_to(slot.port)  # what kill -15 is about to cut
    t0 = time.monotonic()
    proc = subprocess.run([str(CLASSIC / "deploy.sh")], env=run_env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    t1 = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"classic deploy.sh failed (rc={proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    # switch.sh is the last step: the reload happened in the last moments of the run
    return {"op": "classic-deploy", "port": slot.port, "start": t0, "end": t1,
            "duration": round(t1 - t0, 3), "connections_at_kill": cut_connections,
            "output": proc.stdout[-400:]}


def _stop_pidfile_apps(logs: Path, apps_root: Path) -> None:
    """Stop apps that restart.sh started with nohup, by PID from its pid files, checking
    the command line first (a pid file may name a reused PID)."""
    for pidfile in logs.glob("app-*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            continue
        stop_pid(pid, timeout=5.0, expect=str(apps_root))


def run_classic(
    k: int = 20,
    *,
    workdir: Path | None = None,
    params: ClassicParams | None = None,
    guess_idle: bool = False,
    warmup: float = 2.0,
    nginx_workers: int = 2,
    mix: dict[str, ClassConfig] | None = None,
    label: str = "classic",
    slow_seconds: float = 1.5,
) -> LoadResult:
    """K classic deploys back to back under load; returns the LoadResult.

    ``result.windows`` holds one (start, end) per deploy around its switch: switch.sh is
    the last few ms of deploy.sh, so the window is [end - 50 ms, end + WINDOW_TAIL].
    ``result.meta["ops"]`` has every deploy's timings.
    """
    k = max(1, min(k, MAX_DEPLOYS))
    params = params or ClassicParams()
    workdir = workdir or REPO / ".run" / "bench" / f"classic-{int(time.time())}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    apps = DemoApps(workdir)
    nginx = PrivateNginx(workdir / "nginx", worker_processes=nginx_workers)
    switcher = ClassicSwitcher(nginx, apps.slots)
    slots = list(apps.slots.values())
    ops: list[dict[str, Any]] = []
    gen: LoadGen | None = None
    result: LoadResult | None = None
    try:
        # first build, started the classic way, then nginx pointed at it
        env = _script_env(nginx, switcher, apps, params, apps.release("v1"))
        subprocess.run([str(CLASSIC / "restart.sh"), str(slots[0].port)],
                       env={**env, "STOP_SLEEP": "0"}, check=True, capture_output=True,
                       timeout=30)
        subprocess.run([str(CLASSIC / "health.sh"), str(slots[0].port)],
                       env={**env, "HEALTH_INITIAL_SLEEP": "0.2"}, check=True,
                       capture_output=True, timeout=60)
        switcher.setup(slots[0].port)
        nginx.start()
        gen = LoadGen(nginx.url(), label=label, max_duration=175.0, mix=mix,
                      slow_seconds=slow_seconds).start()
        gen.wait(warmup)
        for i in range(k):
            slot = slots[(i + 1) % 2]
            env = _script_env(nginx, switcher, apps, params, apps.release(f"v{i + 2}"))
            op = _classic_deploy(env, slot, guess_idle=guess_idle, timeout=120)
            op["version"] = f"v{i + 2}"
            ops.append(op)
            if not gen.running:
                break  # max_duration reached: stop deploying, report what we have
        gen.wait(warmup)
    finally:
        if gen is not None:
            # window: the switch is the tail of each deploy.sh run
            windows = [(op["end"] - 0.05, op["end"] + WINDOW_TAIL) for op in ops]
            result = gen.stop(windows=windows)
        nginx.stop()
        _stop_pidfile_apps(workdir / "logs", workdir / "releases")
    assert result is not None
    result.meta.update({
        "mode": "classic",
        "ops": ops,
        "params": params.__dict__,
        "guess_idle": guess_idle,
        "nginx_workers": nginx_workers,
        "workdir": str(workdir),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=20, help=f"K (max {MAX_DEPLOYS})")
    parser.add_argument("--stop-sleep", type=float, default=ClassicParams.stop_sleep)
    parser.add_argument("--health-initial-sleep", type=float,
                        default=ClassicParams.health_initial_sleep)
    parser.add_argument("--health-interval", type=float, default=ClassicParams.health_interval)
    parser.add_argument("--guess-idle", action="store_true",
                        help="let deploy.sh guess the idle port from live traffic")
    parser.add_argument("--json", help="write the result (without records) here")
    args = parser.parse_args(argv)
    params = ClassicParams(args.stop_sleep, args.health_initial_sleep, args.health_interval)
    result = run_classic(args.deploys, params=params, guess_idle=args.guess_idle)
    print(result.summary())
    ops = result.meta["ops"]
    if ops:
        mean = sum(o["duration"] for o in ops) / len(ops)
        print(f"  deploys: {len(ops)}, mean {mean:.2f}s each")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=str))
    print(result.result_line())
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
