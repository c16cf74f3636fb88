"""A dry run's plan: one line per change in words, the exact command kept for --verbose."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    where: str  # a host label, or "local"
    words: str
    command: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def add(self, where: str, words: str, command: str = "") -> None:
        self.steps.append(Step(where, words, command))

    def lines(self, *, verbose: bool = False) -> list[str]:
        out = []
        for step in self.steps:
            out.append(f"[{step.where}] {step.words}")
            if verbose and step.command:
                out.extend(f"      $ {line}" for line in step.command.strip().splitlines())
        return out
