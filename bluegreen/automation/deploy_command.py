"""The deploy subprocess: its argv and its environment. Pure.

Placeholders are substituted inside each argv element in a single pass, so a value that
itself looks like a placeholder (a pusher named "{artifact}") stays literal, and nothing
ever goes through a shell. Branch, commit and job id reach the deploy only as environment
variables.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping

DEPLOY_PLACEHOLDERS = frozenset({"python", "config", "artifact", "version", "who"})
JENKINS_PLACEHOLDERS = frozenset({"branch", "sha", "repo", "who", "job_id"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def unknown_placeholders(templates: Iterable[str], allowed: frozenset[str]) -> list[str]:
    found = {m.group(1) for t in templates for m in _PLACEHOLDER.finditer(t)}
    return sorted(found - allowed)


def substitute(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def render_argv(template: Iterable[str], *, config: str, artifact: str, version: str,
                who: str, python: str = sys.executable) -> list[str]:
    values = {"python": python, "config": config, "artifact": artifact, "version": version,
              "who": who}
    return [substitute(part, values) for part in template]


def child_env(base: Mapping[str, str], *, job_id: int, commit: str, branch: str,
              build_url: str = "", repo: str = "",
              withheld: Iterable[str] = ()) -> dict[str, str]:
    """The environment of every command a job runs (git, build, deploy).

    `withheld` names variables that must not reach a child: the service's own webhook
    secrets and Jenkins token, which a build script from the repository has no business with.
    """
    env = {k: v for k, v in base.items() if k not in set(withheld)}
    for stale in ("BLUEGREEN_BUILD_URL", "BLUEGREEN_COMMIT", "BLUEGREEN_BRANCH",
                  "BLUEGREEN_JOB_ID", "BLUEGREEN_REPO"):
        env.pop(stale, None)
    env.update({
        "BLUEGREEN_JOB_ID": str(job_id),
        "BLUEGREEN_COMMIT": commit,
        "BLUEGREEN_BRANCH": branch,
        "GIT_TERMINAL_PROMPT": "0",  # a credential prompt would hang a job forever
    })
    if repo:
        env["BLUEGREEN_REPO"] = repo
    if build_url:
        env["BLUEGREEN_BUILD_URL"] = build_url
    return env
