"""The speed measurements in one line: what the README's speed table is read from.

Each measurement (bench/switch.py, ...) writes its numbers to .run/bench/NAME.json under
"result"; bench/run.py merges those dicts and prints `summary_line` and `targets` after
every benchmark's own result line.
"""

from __future__ import annotations

from typing import Any

from bench.health import TUNED_INTERVAL


def _get(r: dict[str, Any], *keys: str) -> Any:
    cur: Any = r
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def targets(r: dict[str, Any]) -> dict[str, bool | None]:
    """Each speed target (issues 3 and 7): True met, False missed, None not measured."""
    def ok(*keys: str) -> bool | None:
        v = _get(r, *keys)
        return None if v is None else bool(v)

    def both(a: bool | None, b: bool | None) -> bool | None:
        return None if a is None or b is None else a and b

    sw = {f"{name}[{mode}]": ok("switch", mode, f"{name}_ok")
          for mode in ("lua", "reload") for name in ("switch", "rollback")}
    return {**sw, "deploy_overhead": ok("deploy", "ok"), "health_detect": ok("health", "ok"),
            "redeploy_0_bytes": ok("upload", "redeploy_ok"), "upload_vs_scp": ok("upload", "ok"),
            "history": both(ok("history", "status_ok"), ok("history", "deploy_ok")),
            "memory": ok("memory", "ok"), "cli_startup_local": ok("startup", "local_ok"),
            "cli_startup_fab": ok("startup", "fab_ok")}


def summary_line(r: dict[str, Any]) -> str:
    def g(*keys: str) -> Any:
        return _get(r, *keys)

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
        f"maxrss={num(g('memory', 'small_mb'), '.0f')}/{num(g('memory', 'big_mb'), '.0f')}MB "
        f"cli_startup={num(g('startup', 'bluegreen_switch_s'), '.2f', 's')}/"
        f"fab+{num(g('startup', 'fab_over_version_s'), '.2f', 's')}"
    )
