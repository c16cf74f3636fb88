"""Build locally: the exact pushed commit, in a per-app work dir, with the configured command.

The commit and branch reach the build only through BLUEGREEN_COMMIT / BLUEGREEN_BRANCH in
its environment. A string build command runs as `bash -c <the string from the config>`; the
string is never formatted with event data, so a branch named `$(touch x)` is just bytes in
an environment variable.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from pathlib import Path

from bluegreen.automation.rules import Rule
from bluegreen.automation.steps import JobContext, JobFailed


def build_argv(command: tuple[str, ...] | str) -> list[str]:
    return ["bash", "-c", command] if isinstance(command, str) else list(command)


def checkout(ctx: JobContext, *, work_dir: Path, clone_url: str, branch: str, sha: str,
             env: Mapping[str, str], timeout: float) -> None:
    """Leave work_dir at exactly `sha`, clean. Fetches the branch first (works with any
    server); if the branch has moved past `sha` since the push, asks for the commit itself."""
    git = ["git", "-C", str(work_dir)]
    if not (work_dir / ".git").is_dir():
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx.run("git init", ["git", "init", "-q", str(work_dir)], env=env, timeout=timeout)
        ctx.run("git remote", [*git, "remote", "add", "origin", clone_url], env=env,
                timeout=timeout)
    else:
        ctx.run("git remote", [*git, "remote", "set-url", "origin", clone_url], env=env,
                timeout=timeout)
    refspec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
    ctx.run("git fetch", [*git, "fetch", "--no-tags", "origin", refspec], env=env,
            timeout=timeout)
    present = ctx.run("git cat-file", [*git, "cat-file", "-e", f"{sha}^{{commit}}"], env=env,
                      timeout=timeout, check=False)
    if present.returncode != 0:
        fetched = ctx.run("git fetch commit", [*git, "fetch", "--no-tags", "origin", sha],
                          env=env, timeout=timeout, check=False)
        if fetched.returncode != 0:
            raise JobFailed(f"commit {sha[:12]} is no longer on branch {branch!r} and the "
                            "remote will not serve it by SHA")
    ctx.run("git checkout", [*git, "-c", "advice.detachedHead=false", "checkout", "--force",
                             "--detach", sha], env=env, timeout=timeout)
    # Clean: a build must not pick up the previous commit's outputs as its artifact.
    ctx.run("git clean", [*git, "clean", "-ffdxq"], env=env, timeout=timeout)


def find_artifact(checkout_dir: Path, pattern: str) -> Path:
    matches = sorted(Path(p) for p in glob.glob(str(checkout_dir / pattern)) if Path(p).is_file())
    if not matches:
        raise JobFailed(f"the build produced no file matching {pattern!r}")
    if len(matches) > 1:
        names = ", ".join(str(m.relative_to(checkout_dir)) for m in matches[:5])
        raise JobFailed(f"the build produced {len(matches)} files matching {pattern!r} "
                        f"({names}); make the artifact pattern specific")
    return matches[0]


def build_artifact(ctx: JobContext, rule: Rule, *, work_root: Path, branch: str, sha: str,
                   env: Mapping[str, str], git_timeout: float) -> Path:
    work_dir = work_root / rule.app / rule.environment / "checkout"
    checkout(ctx, work_dir=work_dir, clone_url=rule.clone_url, branch=branch, sha=sha, env=env,
             timeout=git_timeout)
    ctx.run("build", build_argv(rule.build_command), env=env, cwd=work_dir,
            timeout=rule.build_timeout)
    return find_artifact(work_dir, rule.artifact)
