"""Console output that reads like a story in a Jenkins log: one line per phase start and end."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class PhaseNote:
    text: str = ""


@dataclass
class Reporter:
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    durations: dict[str, float] = field(default_factory=dict)
    quiet: bool = False

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[PhaseNote]:
        self.say(f"--> {name:<9} {detail}".rstrip())
        note = PhaseNote()
        start = time.monotonic()
        try:
            yield note
        except BaseException:
            took = time.monotonic() - start
            self.durations[name] = self.durations.get(name, 0.0) + took
            self.say(f"<-- {name:<9} FAILED after {took:.3f}s")
            raise
        took = time.monotonic() - start
        self.durations[name] = self.durations.get(name, 0.0) + took
        self.say(f"<-- {name:<9} ok {took:.3f}s{'  ' + note.text if note.text else ''}")
