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


def work_dir_for(rule: Rule, work_root: Path) -> Path:
    return work_root / rule.app / rule.environment / "checkout"


def fetch_commit(ctx: JobContext, *, work_dir: Path, clone_url: str, branch: str, sha: str,
                 env: Mapping[str, str], timeout: float) -> None:
    """Make `sha` present in work_dir's object store. Fetches the branch first (works with
    any server); if the branch has moved past `sha` since the push, asks for the commit."""
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
    if not ensure_commit(ctx, work_dir=work_dir, sha=sha, env=env, timeout=timeout):
        raise JobFailed(f"commit {sha[:12]} is no longer on branch {branch!r} and the "
                        "remote will not serve it by SHA")


def has_commit(ctx: JobContext, *, work_dir: Path, sha: str, env: Mapping[str, str],
               timeout: float) -> bool:
    present = ctx.run("git cat-file", ["git", "-C", str(work_dir), "cat-file", "-e",
                                       f"{sha}^{{commit}}"], env=env, timeout=timeout,
                      check=False)
    return present.returncode == 0


def ensure_commit(ctx: JobContext, *, work_dir: Path, sha: str, env: Mapping[str, str],
                  timeout: float) -> bool:
    """Whether `sha` is (or, fetched by SHA from origin, now is) in work_dir."""
    if has_commit(ctx, work_dir=work_dir, sha=sha, env=env, timeout=timeout):
        return True
    fetched = ctx.run("git fetch commit", ["git", "-C", str(work_dir), "fetch", "--no-tags",
                                           "origin", sha], env=env, timeout=timeout,
                      check=False)
    return fetched.returncode == 0 and has_commit(ctx, work_dir=work_dir, sha=sha, env=env,
                                                  timeout=timeout)


def is_ancestor(ctx: JobContext, *, work_dir: Path, ancestor: str, descendant: str,
                env: Mapping[str, str], timeout: float) -> bool | None:
    """`git merge-base --is-ancestor`: True also when both are the same commit; None when
    git cannot tell (a commit missing from the clone)."""
    done = ctx.run("git merge-base", ["git", "-C", str(work_dir), "merge-base",
                                      "--is-ancestor", ancestor, descendant], env=env,
                   timeout=timeout, check=False)
    return {0: True, 1: False}.get(done.returncode)


def checkout(ctx: JobContext, *, work_dir: Path, clone_url: str, branch: str, sha: str,
             env: Mapping[str, str], timeout: float) -> None:
    """Leave work_dir at exactly `sha`, clean."""
    fetch_commit(ctx, work_dir=work_dir, clone_url=clone_url, branch=branch, sha=sha, env=env,
                 timeout=timeout)
    git = ["git", "-C", str(work_dir)]
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


def build_artifact(ctx: JobContext, rule: Rule, *, work_dir: Path,
                   env: Mapping[str, str]) -> Path:
    """Run the build in a checkout (see checkout()) and find its one artifact."""
    ctx.run("build", build_argv(rule.build_command), env=env, cwd=work_dir,
            timeout=rule.build_timeout)
    return find_artifact(work_dir, rule.artifact)
