"""`bluegreen serve | poll | jobs | release`.

add_commands(subparsers) adds the subcommands to any argparse subparsers object; each sets
`func(args) -> int` (the exit code). A BluegreenError is rendered to stderr and turned into
its exit code here, so every caller gets the same 3 a.m. message; so is a queue database
that cannot be opened.
The config path lands in `args.automation_config`, so it cannot collide with a top-level
`--config` of the main CLI.

Names (issue 12): `bluegreen jobs` is the automation jobs, every state, newest first;
deploy history (deploys, switches, rollbacks) is `fab history`. `bluegreen history` no
longer lists jobs: unless the main CLI defines its own `history`, it says where to look
and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence

from bluegreen.automation import service
from bluegreen.automation.jobqueue import ALL_LANES, STATES, Job, JobQueue
from bluegreen.automation.settings import Settings, load_settings, resolve_secrets
from bluegreen.errors import BluegreenError

HISTORY_POINTER = ("bluegreen history: deploy history (deploys, switches, rollbacks) is "
                   "`fab history`; automation jobs are `bluegreen jobs` (`--job ID` shows one "
                   "with its log tail)")
_SHA_PREFIX = re.compile(r"^[0-9a-f]{7,64}$")

CONFIG_ENV = "BLUEGREEN_AUTOMATION_CONFIG"
DEFAULT_CONFIG = "/etc/bluegreen/automation.toml"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", dest="automation_config",
        default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG),
        help=f"automation.toml (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _listing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default="", help="only this app")
    parser.add_argument("--limit", type=_positive, default=50)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = subparsers.add_parser(
        "serve", help="receive webhooks (GitHub, GitLab, Gitea, generic, Jenkins) and run "
        "deploy jobs", description="Receive webhooks and run the deploy jobs they enqueue.")
    _common(serve)
    serve.add_argument("--listen", help="override service.listen")
    serve.add_argument("--port", type=int, help="override service.port (0: any free port)")
    serve.set_defaults(func=cmd_serve)

    poll = subparsers.add_parser(
        "poll", help="poll watched branches with git ls-remote and enqueue deploys",
        description="Poll [[poll]] targets; a new SHA enqueues the job a webhook would. "
        "Jobs run in `bluegreen serve` unless --run-jobs.")
    _common(poll)
    mode = poll.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="poll every target once, print what was seen, exit (1 if a remote "
                      "was unreachable)")
    mode.add_argument("--run-jobs", action="store_true",
                      help="also run the jobs here (when no `bluegreen serve` runs)")
    poll.set_defaults(func=cmd_poll)

    jobs = subparsers.add_parser(
        "jobs", help="automation jobs (webhooks, polling), newest first",
        description="Automation jobs, every state, newest first. Deploy history (deploys, "
        "switches, rollbacks) is `fab history`.")
    _common(jobs)
    _listing(jobs)
    jobs.add_argument("--state", action="append", choices=STATES,
                      help="only jobs in this state (repeatable; default: all)")
    jobs.add_argument("--job", type=int, metavar="ID",
                      help="show one job in full, with its log tail")
    jobs.add_argument("--retry", type=int, metavar="ID",
                      help="run a finished job (failed, skipped, interrupted, superseded) "
                      "again as a new pending job; a person's explicit request, so the "
                      "replay and rollback checks let it through")
    jobs.set_defaults(func=cmd_jobs)

    release = subparsers.add_parser(
        "release", help="rolled-back commits that automatic deploys leave alone",
        description="After a rollback, automatic deploys do not deploy the rolled-back "
        "commit (nor an ancestor of it) again until a person allows it.")
    _common(release)
    verbs = release.add_subparsers(dest="release_command")
    allow = verbs.add_parser("allow", help="let automatic deploys deploy a rolled-back "
                             "commit again")
    _common(allow)
    allow.add_argument("sha", help="the commit (full SHA, or a prefix of a quarantined one)")
    allow.add_argument("--lane", default="", metavar="APP/ENVIRONMENT",
                       help="only for this app/environment (default: every lane)")
    allow.set_defaults(func=cmd_release_allow)
    listed = verbs.add_parser("list", help="rolled-back commits automatic deploys leave alone")
    _common(listed)
    listed.add_argument("--json", action="store_true", help="machine-readable output")
    listed.set_defaults(func=cmd_release_list)
    release.set_defaults(func=cmd_release_list)

    if "history" not in subparsers.choices:  # the main CLI may own `history` one day
        history = subparsers.add_parser(
            "history", help="moved: `fab history` (deploys), `bluegreen jobs` (jobs)",
            description=HISTORY_POINTER)
        # the options it used to take, so an old script gets the pointer, not a usage error
        for flag in ("-c", "--config", "--log-level", "--app", "--limit", "--job"):
            history.add_argument(flag, dest=f"old_{flag.strip('-')}", help=argparse.SUPPRESS)
        history.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
        history.set_defaults(func=cmd_history)


Command = Callable[[argparse.Namespace], int]


def _reported(command: Command) -> Command:
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BluegreenError as exc:
            print(exc.render(), file=sys.stderr)
            return exc.exit_code
        except (sqlite3.Error, OSError) as exc:  # an unreadable state dir, a locked db
            where = getattr(args, "automation_config", "")
            if isinstance(exc, OSError) and not exc.filename:
                print(f"FAILED: {exc.strerror or exc}", file=sys.stderr)
                return 1
            detail = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError)
                      else f"{type(exc).__name__}: {exc}")
            print(f"FAILED: cannot use the automation state ({detail})\n"
                  f"  next: check service.state_dir in {where} and that this user may read "
                  "and write it", file=sys.stderr)
            return 1
    return run


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def _settings(args: argparse.Namespace) -> Settings:
    _setup_logging(args.log_level)
    return load_settings(args.automation_config)


@_reported
def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    overrides = {k: v for k, v in (("listen", args.listen), ("port", args.port)) if v is not None}
    if overrides:
        settings = dataclasses.replace(
            settings, service=dataclasses.replace(settings.service, **overrides))
    secrets = resolve_secrets(settings, os.environ)
    return service.serve(settings, secrets)


@_reported
def cmd_poll(args: argparse.Namespace) -> int:
    settings = _settings(args)
    secrets = resolve_secrets(settings, os.environ, webhooks=False)
    return service.poll(settings, secrets, once=args.once, run_jobs=args.run_jobs)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def format_table(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "no jobs"
    rows = [("ID", "STATE", "LANE", "FROM", "BRANCH", "COMMIT", "CREATED", "SUMMARY")]
    for job in jobs:
        rows.append((str(job.id), job.state, job.lane, job.provider, job.branch[:40],
                     job.sha[:12] or "-", _when(job.created_at), job.summary[:100]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
                     + "  " + r[-1] for r in rows)


def format_job(job: Job) -> str:
    lines = [f"job {job.id}: {job.state}: {job.summary or '-'}",
             f"  lane      {job.lane} (rule {job.rule}, action {job.action})",
             f"  from      {job.provider} {job.who} delivery {job.delivery_id or '-'}",
             f"  source    {job.repo} branch {job.branch!r} commit {job.sha or '-'}",
             f"  created   {_when(job.created_at)}  started {_when(job.started_at)}  "
             f"finished {_when(job.finished_at)}"]
    if job.explicit:
        lines.append("  explicit  a person asked for it (`bluegreen jobs --retry`): the replay "
                     "and rollback checks did not apply")
    if job.build_url:
        lines.append(f"  build     {job.build_url}")
    if job.superseded_by:
        lines.append(f"  replaced  by job {job.superseded_by}")
    if job.deploy_argv:
        lines.append(f"  deploy    {job.deploy_argv!r} -> exit {job.exit_code}")
    if job.log_path:
        lines.append(f"  log       {job.log_path}")
    if job.log_tail:
        lines.append("  last log lines:")
        lines.extend("    " + line for line in job.log_tail.splitlines())
    return "\n".join(lines)


def _print_jobs(jobs: Sequence[Job], as_json: bool) -> None:
    if as_json:
        print(json.dumps([j.public() for j in jobs], indent=2, sort_keys=True))
    else:
        print(format_table(jobs))


def _existing_queue(settings: Settings) -> JobQueue | None:
    """Reading commands never create the state dir (they may run as another user)."""
    if not settings.db_path.exists():
        print(f"no jobs yet (no queue at {settings.db_path})")
        return None
    return JobQueue(settings.db_path)


@_reported
def cmd_jobs(args: argparse.Namespace) -> int:
    queue = _existing_queue(_settings(args))
    if queue is None:
        return 0 if args.retry is None and args.job is None else 1
    if args.retry is not None:
        try:
            submitted = queue.retry(args.retry)
        except (LookupError, ValueError) as exc:
            raise BluegreenError(str(exc).strip("'\""), phase="jobs",
                                 hint="list jobs with `bluegreen jobs`") from None
        print(f"job {args.retry} queued again as job {submitted.job_ids[0]}")
        return 0
    if args.job is not None:
        job = queue.get(args.job)
        if job is None:
            raise BluegreenError(f"no job {args.job}", phase="jobs",
                                 hint="list jobs with `bluegreen jobs`")
        print(json.dumps(job.public(with_log=True), indent=2, sort_keys=True) if args.json
              else format_job(job))
        return 0
    _print_jobs(queue.list_jobs(states=args.state or (), app=args.app, limit=args.limit),
                args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    print(HISTORY_POINTER, file=sys.stderr)
    return 2


def _person() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@_reported
def cmd_release_allow(args: argparse.Namespace) -> int:
    settings = _settings(args)
    wanted = args.sha.strip().lower()
    if not _SHA_PREFIX.match(wanted):
        raise BluegreenError(f"{args.sha[:80]!r} is not a commit SHA (7 to 64 hex digits)",
                             phase="release", hint="see `bluegreen release list`")
    if args.lane and args.lane not in settings.lanes:
        raise BluegreenError(f"no rule deploys to lane {args.lane[:80]!r}", phase="release",
                             hint="lanes: " + (", ".join(settings.lanes) or "none"))
    queue = JobQueue(settings.db_path)
    held = [q for q in queue.quarantined(args.lane) if q.sha.startswith(wanted)]
    shas = sorted({q.sha for q in held})
    if len(shas) > 1:
        raise BluegreenError(f"{wanted} matches {len(shas)} rolled-back commits: "
                             + ", ".join(sha[:12] for sha in shas), phase="release",
                             hint="give more of the SHA")
    if not shas and len(wanted) not in (40, 64):
        raise BluegreenError(f"no rolled-back commit starts with {wanted}", phase="release",
                             hint="give the full SHA to allow it before the service has "
                             "seen its rollback; `bluegreen release list` shows what it has")
    sha = shas[0] if shas else wanted
    queue.allow(args.lane or ALL_LANES, sha, who=_person(), why="bluegreen release allow")
    lanes = sorted({q.lane for q in held}) or [args.lane or "every lane"]
    print(f"allowed {sha[:12]} for automatic deploys again ({', '.join(lanes)})"
          + ("" if held else "; it was not quarantined (yet)"))
    return 0


@_reported
def cmd_release_list(args: argparse.Namespace) -> int:
    queue = _existing_queue(_settings(args))
    held = queue.quarantined() if queue is not None else []
    if getattr(args, "json", False):
        print(json.dumps([dataclasses.asdict(q) for q in held], indent=2, sort_keys=True))
        return 0
    if not held:
        print("no rolled-back commits held back from automatic deploys")
        return 0
    rows = [("LANE", "COMMIT", "ROLLED BACK", "BY")]
    rows += [(q.lane, q.sha[:12], _when(q.rolled_back_at), q.who or "-") for q in held]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
              + "  " + row[3])
    print("allow one again with `bluegreen release allow <sha>`")
    return 0
