"""`python -m bluegreen.automation serve|poll|jobs|release`: the automation commands on their
own, with the same subcommands the main `bluegreen` CLI mounts through add_commands()."""

from __future__ import annotations

import argparse
import sys

from bluegreen.automation.cli import add_commands
from bluegreen.errors import BluegreenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bluegreen.automation",
                                     description="Automatic deploys: webhooks and Git polling.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BluegreenError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
