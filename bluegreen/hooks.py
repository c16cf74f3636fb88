"""Run the user's hooks: executables in hooks/ on the machine running bluegreen.

Like Kamal's and git's hooks: a missing hook is skipped, a present one must be executable,
and a failing pre-* hook aborts before anything changed. Hooks get BLUEGREEN_* variables.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from bluegreen.config import Config
from bluegreen.errors import BluegreenError

HOOK_NAMES = ("pre-deploy", "pre-switch", "post-switch", "post-deploy", "on-failure",
              "post-rollback")


def hook_path(cfg: Config, name: str) -> Path:
    return cfg.resolve(cfg.hooks.dir) / name


def check_hook(cfg: Config, name: str) -> Path:
    """The hook's path; raises when it exists but cannot run (a dry run checks this too)."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name}")
    path = hook_path(cfg, name)
    if path.exists() and not os.access(path, os.X_OK):
        raise BluegreenError(f"hook {path} exists but is not executable", phase=name,
                             hint=f"chmod +x {path}, or remove it")
    return path


def run_hook(cfg: Config, name: str, env: Mapping[str, str]) -> bool:
    """Run hook `name` if it exists. Returns whether it ran; raises when it fails."""
    path = check_hook(cfg, name)
    if not path.exists():
        return False
    try:
        proc = subprocess.run([str(path)], env={**os.environ, **env}, cwd=cfg.base_dir,
                              capture_output=True, text=True, timeout=cfg.hooks.timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BluegreenError(f"hook {name} timed out after {cfg.hooks.timeout:g}s", phase=name,
                             hint="make the hook faster or raise hooks.timeout") from exc
    output = (proc.stdout + proc.stderr).strip()
    for line in output.splitlines()[-20:]:
        print(f"    {name}: {line}", flush=True)
    if proc.returncode != 0:
        raise BluegreenError(f"hook {name} failed with exit code {proc.returncode}",
                             phase=name, hint=f"see its output above ({path})")
    return True
