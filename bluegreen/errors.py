"""Errors a person reads at 3 a.m.: each says what failed, where, and what to do next."""

from __future__ import annotations


class BluegreenError(Exception):
    """Base for every failure we expect and explain; anything else is a bug."""

    exit_code = 1

    def __init__(self, what: str, *, host: str = "", phase: str = "", hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.host = host
        self.phase = phase
        self.hint = hint

    def render(self) -> str:
        where = " ".join(p for p in (f"phase={self.phase}" if self.phase else "",
                                     f"host={self.host}" if self.host else "") if p)
        lines = [f"FAILED{' [' + where + ']' if where else ''}: {self.what}"]
        if self.hint:
            lines.append(f"  next: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class ConfigError(BluegreenError):
    """A config file, key or value is wrong; names the file, the key and what is expected."""

    exit_code = 2

    def __init__(self, source: str, key: str, problem: str, *, line: int | None = None,
                 hint: str = "") -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.line = line  # when the text itself is at fault (not TOML, not UTF-8)
        at = f"{source}:{line}" if line else source
        super().__init__(
            f"{at}: {key}: {problem}" if key else f"{at}: {problem}",
            phase="config",
            hint=hint or (
                f"correct the override ({source})" if source.startswith(("--set", "environment"))
                else f"fix {key or 'the file'} in {source}, or override it with "
                     "--set KEY=VALUE or BLUEGREEN__SECTION__KEY"),
        )


class ArgumentError(ConfigError):
    """A command-line value is wrong (exit 2, like a config error): `source` is the flag,
    the message says what is wrong with it and the hint how to pass it."""

    def __init__(self, flag: str, problem: str, *, hint: str = "") -> None:
        super().__init__(flag, "", problem, hint=hint or f"pass {flag} again with a valid value")
        self.phase = "arguments"


class LockHeld(BluegreenError):
    exit_code = 3


class CommandFailed(BluegreenError):
    """A remote or local command failed; carries its output for the failure report."""

    def __init__(self, what: str, *, host: str = "", phase: str = "", hint: str = "",
                 command: str = "", rc: int | None = None, stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(what, host=host, phase=phase, hint=hint)
        self.command = command
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
