"""`bluegreen ...`: the same actions as the fab tasks, plus the long-running services.

`python -m bluegreen deploy ...` is what the webhook worker runs for each job, so a crashed
deploy never takes the service down with it.
"""

from __future__ import annotations

import argparse
import sys

from bluegreen.runner import execute

CORE_COMMANDS = ("deploy", "switch", "rollback", "status", "releases", "history", "unlock")


def build_parser(with_automation: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bluegreen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, mutating: bool = True) -> None:
        p.add_argument("--config", default="", help="bluegreen.toml (default: ./bluegreen.toml)")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config value (repeatable)")
        if mutating:
            p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
            p.add_argument("--verbose", action="store_true",
                           help="with --dry-run: the exact commands under each step")
            p.add_argument("--who", default="", help="name recorded in the lock and history")
            p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                           help="wait this long for a lock another live run holds")
            p.add_argument("--parallel", type=int, default=0, metavar="N",
                           help="hosts acted on at once (default: fleet.parallel, 32)")
            p.add_argument("--json", action="store_true",
                           help="machine-readable output: the outcome and a row per host")

    p = sub.add_parser("deploy", help="ship a build to the idle slot and switch to it")
    common(p)
    p.add_argument("--artifact", default="")
    p.add_argument("--version", default="")
    p.add_argument("--force", action="store_true",
                   help="deploy an artifact the watch window once reverted")
    p.add_argument("--batch", default="", metavar="N|P%",
                   help="rolling deploy (every app host its own traffic host): 2 or 25%% of "
                        "the hosts at a time")
    p.add_argument("--max-fail", type=int, default=None, metavar="N",
                   help="hosts that may fail before a rolling deploy stops (default 0)")
    p.add_argument("--pause", type=float, default=None, metavar="SECONDS",
                   help="wait between batches")
    p.add_argument("--keep-partial", action="store_true",
                   help="a stopped rolling deploy leaves the hosts it switched switched")
    p = sub.add_parser("switch", help="flip traffic to the other slot")
    common(p)
    p.add_argument("--to", default="", choices=["", "blue", "green"])
    p = sub.add_parser("rollback", help="back to the previous release")
    common(p)
    for name in ("status", "releases"):
        p = sub.add_parser(name, help=f"show {name}")
        common(p, mutating=False)
        p.add_argument("--json", action="store_true")
        if name == "status":
            p.add_argument("--history", type=int, default=10)
    p = sub.add_parser("history", help="deploys, switches and rollbacks (automation jobs: "
                                      "`bluegreen jobs`)",
                       description="Deploys, switches, rollbacks, recoveries and lock breaks "
                                   "of one app, from its audit trail (= `fab history`).")
    common(p, mutating=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", dest="history", type=int, default=20)
    p.add_argument("--since", default="", help="30m, 12h, 7d or an ISO date")
    p.add_argument("--action", dest="only_action", default="",
                   help="deploy, switch, rollback, recover or unlock")
    p = sub.add_parser("unlock", help="break a stale deploy lock")
    common(p, mutating=False)
    p.add_argument("--who", default="")
    if with_automation:  # serve, poll, jobs...: the automatic entry points
        from bluegreen.automation.cli import add_commands
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # a deploy never loads the automation package: start-up time is part of every switch
    first = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(with_automation=first not in CORE_COMMANDS).parse_args(argv)
    if hasattr(args, "func"):  # subcommands registered by bluegreen.automation
        return int(args.func(args) or 0)
    return execute(args.command, config=args.config, overrides=args.overrides,
                   dry_run=getattr(args, "dry_run", False),
                   verbose=getattr(args, "verbose", False), who=getattr(args, "who", ""),
                   lock_wait=getattr(args, "lock_wait", 0.0),
                   as_json=getattr(args, "json", False), artifact=getattr(args, "artifact", ""),
                   version=getattr(args, "version", ""), to=getattr(args, "to", ""),
                   history=getattr(args, "history", 10), since=getattr(args, "since", ""),
                   only_action=getattr(args, "only_action", ""),
                   force=getattr(args, "force", False),
                   parallel=getattr(args, "parallel", 0), batch=getattr(args, "batch", ""),
                   max_fail=getattr(args, "max_fail", None), pause=getattr(args, "pause", None),
                   keep_partial=getattr(args, "keep_partial", False))


if __name__ == "__main__":
    sys.exit(main())
