"""The small subset of JSONPath the Generic Webhook Trigger is mostly used with.

Supported: `$`, `.name`, `['name']` / `["name"]`, `[N]` and `[-N]` (from the end).
No wildcards or filters: a deploy needs one value per path, and an expression that could
return several would make "which branch was pushed" ambiguous.
"""

from __future__ import annotations

import re
from typing import Any

Step = str | int

_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z0-9_\-]+)
      | \[(?P<index>-?\d+)\]
      | \[(?P<q>['"])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]""",
    re.VERBOSE,
)


def parse_path(path: str) -> tuple[Step, ...]:
    """`$.a.b[0]` -> ("a", "b", 0). Raises ValueError naming the offending position."""
    text = path.strip()
    if not text.startswith("$"):
        raise ValueError(f"JSONPath {path!r} must start with '$'")
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"JSONPath {path!r}: cannot parse at position {pos}: {text[pos:]!r}")
        if match.group("name") is not None:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(match.group("quoted"))
        pos = match.end()
    return tuple(steps)


def extract(document: Any, path: str | tuple[Step, ...]) -> Any | None:
    """The value at `path`, or None when any step is missing or of the wrong kind."""
    steps = parse_path(path) if isinstance(path, str) else path
    current = document
    for step in steps:
        if isinstance(step, int):
            if not isinstance(current, list) or not -len(current) <= step < len(current):
                return None
            current = current[step]
        else:
            if not isinstance(current, dict) or step not in current:
                return None
            current = current[step]
    return current
