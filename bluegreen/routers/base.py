"""The Router interface: everything the switch transaction, draining, status and (later) the
watch window need from whatever moves traffic on one traffic host.

A driver owns one file on its host (`target`, rendered from a template) and knows how to
make it, or a part of it, take effect. The transaction (traffic.py) drives several routers
at once through install -> test -> apply -> verify, and `restore` on any failure.

Capabilities a driver may lack answer None (cannot count in-flight requests, has no
counters) or raise Unsupported (weights, preview) with a message that says which mode has it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from bluegreen import render
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host


class Unsupported(BluegreenError):
    """This way of moving traffic cannot do that (say, weights with an nginx reload)."""


class ConfigRejected(BluegreenError):
    """The router's own test refused the rendered file; the previous file is back."""


@dataclass
class Applied:
    """What one router changed on its host, so that exactly that can be undone."""

    previous: str | None  # the file before us; None: there was none
    log_offset: int = 0  # error log size before we applied: only what follows is ours
    reloaded: bool = False  # how it was applied decides how it is undone
    flipped: bool = False  # lua: the live port was set through the control listener


@dataclass(frozen=True)
class Routed:
    """Where traffic goes on one traffic host: as the router itself sees it, and as its
    installed file says. They differ only after a change was cut off half-way."""

    slot: str  # "" when there is no bluegreen config there
    file_slot: str
    detail: str = ""  # how `slot` was learned, or why it could not be


@dataclass(frozen=True)
class Answer:
    """One request through a front door: which slot answered, how, how fast."""

    slot: str
    status: int  # 0: no HTTP answer at all (see error)
    ms: float
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True)
class SlotCounters:
    """Per-slot request counters as the router counts them (for the watch window)."""

    requests: int = 0
    responses: Mapping[str, int] = field(default_factory=dict)  # "2xx": n, "5xx": n ...
    upstream_errors: int = 0
    p99_ms: float | None = None


class Router(ABC):
    kind: ClassVar[str]
    product: ClassVar[str] = "nginx"  # what the user calls it, in messages
    # one host in a mode whose test and apply are one command: saves a round trip
    tests_and_applies_at_once: ClassVar[bool] = False
    # one line the switch prints about this way of switching (what it costs, say); set by
    # router_for
    notice: str = ""

    def __init__(self, cfg: Config, host: Host) -> None:
        self.cfg = cfg
        self.host = host

    @property
    def label(self) -> str:
        return self.host.label

    @property
    def target(self) -> str:
        return self.cfg.nginx_target

    def installed(self) -> str | None:
        return self.host.read(self.target)

    def render(self, slot: str, release: str, version: str, generation: int) -> str:
        return render.render(self.cfg, slot, release, version, generation=generation)

    def generation_floor(self) -> int:
        """The newest generation this router has seen (a lua zone keeps it)."""
        return 0

    # ---------------------------------------------------------------- the change
    def install(self, text: str) -> Applied:
        """Write the rendered file in place, keeping what was there to undo it."""
        previous = self.host.read(self.target)
        offset = self.error_log_size()
        self.host.write_atomic(self.target, text)
        return Applied(previous, offset)

    def error_log_size(self) -> int:
        """Where the error log ends now: only what is written after this is ours."""
        return self.host.size(self.cfg.nginx.error_log) if self.cfg.nginx.error_log else 0

    @abstractmethod
    def test(self, applied: Applied, *, and_apply: bool = False) -> None:
        """Check the installed file (and apply it when `and_apply`); raise on rejection
        after putting the previous file back."""

    @abstractmethod
    def apply(self, applied: Applied, slot: str, shape: str) -> None:
        """Make the installed file (or just its live slot) take effect."""

    @abstractmethod
    def verify(self, applied: Applied, slot: str) -> float:
        """Prove the change took effect; seconds it took."""

    def recovery_applied(self, previous: str | None) -> Applied:
        """What to undo for a change a dead run may have made (the journal's previous
        file): by default, as if the file had been applied every way."""
        return Applied(previous, reloaded=True, flipped=True)

    @abstractmethod
    def restore(self, applied: Applied) -> None:
        """Put back what `install` replaced, and make it take effect again."""

    # ---------------------------------------------------------------- what it sees
    @abstractmethod
    def routed(self) -> Routed: ...

    def inflight(self, port: int) -> int | None:
        """Requests in flight to `port` through this router; None: it cannot count them
        (the caller drains by established connections on the app hosts instead)."""
        del port
        return None

    def wait_drained(self, port: int, timeout: float) -> int:
        """Poll `inflight` until zero holds on two polls 50 ms apart (a request counted a
        moment after the first poll is still caught). Returns what was left at the timeout."""
        deadline = time.monotonic() + timeout
        zeros = 0
        while True:
            n = self.inflight(port) or 0
            zeros = zeros + 1 if n == 0 else 0
            if zeros >= 2:
                return 0
            if time.monotonic() >= deadline:
                return n
            time.sleep(0.05 if n == 0 else 0.02)

    @abstractmethod
    def front_door_request(self, path: str) -> Answer:
        """One GET through this host's front door, as a user would send it."""

    def counters(self) -> dict[str, SlotCounters] | None:
        """Per-slot counters since the router started; None: not available in this mode."""
        return None

    def set_weights(self, weights: Mapping[str, int]) -> None:
        raise Unsupported(f"{self.kind} mode cannot split traffic by weight",
                          host=self.label, phase="switch",
                          hint="use nginx.mode = \"lua\" (or the haproxy router) for canaries")

    def set_preview(self, slot: str | None) -> None:
        raise Unsupported(f"{self.kind} mode has no preview route", host=self.label,
                          phase="switch", hint="use nginx.mode = \"lua\" for a preview route")
