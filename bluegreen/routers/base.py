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
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from bluegreen import httpwire, render
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host


@dataclass(frozen=True)
class FrontDoor:
    """Where users reach one router, and how a probe asks as one of them."""

    address: str
    port: int
    host_header: str
    tls: httpwire.Tls | None = None  # HTTPS: SNI and the certificate's name = host_header

    def url(self, path: str) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.tls else 'http'}://{address}:{self.port}{path}"


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
    weight: int = 0  # the share of users the installed file gives the idle slot (canary)


@dataclass(frozen=True)
class Routed:
    """Where traffic goes on one traffic host: as the router itself sees it, and as its
    installed file says. They differ only after a change was cut off half-way."""

    slot: str  # "" when there is no bluegreen config there
    file_slot: str
    detail: str = ""  # how `slot` was learned, or why it could not be
    # a canary: the idle slot's share of users as the router applies it, and as its file
    # says (0: none); differ only after a weight change was cut off half-way
    weight: int = 0
    file_weight: int = 0
    preview: str = ""  # the slot a preview route reaches ("" none)
    maintenance: bool | None = None  # the front door answers with the maintenance page


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
    # a latency histogram: (upper bound in ms, requests in that bucket), and the requests
    # slower than the last bound. Counts, not a p99, add up across hosts and subtract
    # across readings.
    latency_ms: tuple[tuple[float, int], ...] = ()
    latency_slower: int = 0

    @property
    def failed(self) -> int:
        """What users saw fail: 5xx answers and requests the upstream never answered."""
        return self.responses.get("5xx", 0) + self.upstream_errors


def quantile(buckets: Iterable[tuple[float, int]], slower: int, q: float) -> float | None:
    """The q-quantile of a histogram, interpolated inside its bucket (a bucket's requests
    are taken as spread evenly over it); None when it is empty. Among the requests slower
    than the last bound, that bound is all a histogram can say."""
    pairs = sorted(buckets)
    total = sum(n for _, n in pairs) + slower
    if total <= 0:
        return None
    rank = q * total
    low, seen = 0.0, 0
    for bound, n in pairs:
        if n and seen + n >= rank:
            return low + (bound - low) * max(0.0, rank - seen) / n
        seen += n
        low = bound
    return low


def bucket_delta(before: Iterable[tuple[float, int]], now: Iterable[tuple[float, int]]
                 ) -> tuple[tuple[float, int], ...]:
    """`now - before`, bucket by bucket (a bucket missing before counts as 0)."""
    old = dict(before)
    return tuple((bound, max(0, n - old.get(bound, 0))) for bound, n in now)


def in_canary(cohort: str, weight: int) -> bool:
    """Whether a cohort cookie's user is in a canary's `weight` percent: CRC-32 of the
    cookie, mod 100, below the weight. Both routers decide so (lua: ngx.crc32_short;
    haproxy: the crc32 converter; both are zlib's CRC-32), so a user is on the same side
    whichever serves them, and raising the weight only adds users."""
    return zlib.crc32(cohort.encode()) % 100 < weight


def cohort_in(weight: int, canary: bool, start: int = 0) -> str:
    """A cohort cookie value the routers put on the canary side of `weight` (or, with
    canary=False, on the live side): how bluegreen's own probes reach one side on purpose."""
    i = start
    while True:
        value = f"bluegreen-probe-{i}"
        if in_canary(value, weight) == canary:
            return value
        i += 1


class Router(ABC):
    kind: ClassVar[str]
    product: ClassVar[str] = "nginx"  # what the user calls it, in messages
    # what this way of routing can do beyond switching: "counters", "weights", "preview",
    # "maintenance" (the flows check before they start, and name the hosts that cannot)
    features: ClassVar[frozenset[str]] = frozenset()
    # one host in a mode whose test and apply are one command: saves a round trip
    tests_and_applies_at_once: ClassVar[bool] = False
    # one line the switch prints about this way of switching (what it costs, say); set by
    # router_for
    notice: str = ""
    # extra headers on bluegreen's own requests through the front door while a check must
    # reach one side on purpose: a canary's cohort cookie, the preview token
    probe_headers: dict[str, str] | None = None

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

    def render(self, slot: str, release: str, version: str, generation: int,
               weight: int = 0) -> str:
        """The file for `slot` live (and, with a weight, the idle slot's canary share)."""
        return render.render(self.cfg, slot, release, version, generation=generation,
                             weight=weight)

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

    # ---------------------------------------------------------------- the front door
    verify_hint: ClassVar[str] = "the template must keep the X-Bluegreen-Slot header"

    @abstractmethod
    def door(self) -> FrontDoor:
        """Where users reach this router (its `listen`), and the Host they ask for."""

    @property
    @abstractmethod
    def verify_timeout(self) -> float:
        """How long a change may take to show at the front door."""

    def front_door_request(self, path: str) -> Answer:
        """One GET through this host's front door, as a user would send it (with
        `probe_headers`: a cohort cookie, the preview token)."""
        door = self.door()
        extra: dict[str, object] = {}
        if door.tls is not None:
            extra["tls"] = door.tls
        if self.probe_headers:
            extra["headers"] = dict(self.probe_headers)
        start = time.monotonic()
        try:
            reply = self.host.http_get(door.port, path, timeout=2.0, address=door.address,
                                       host_header=door.host_header, **extra)  # type: ignore[arg-type]
        except (OSError, ValueError, EOFError) as exc:
            return Answer("", 0, (time.monotonic() - start) * 1000,
                          f"{type(exc).__name__}: {exc}")
        return Answer(reply.header(render.SLOT_HEADER) or "", reply.status,
                      (time.monotonic() - start) * 1000)

    def probe_front_door(self) -> tuple[str, str]:
        """(slot that answered, or "", what happened) for one request through the front
        door: the router's view as a client sees it."""
        answer = self.front_door_request(self.cfg.verify_path)
        if answer.error:
            return "", answer.error
        return answer.slot, (f"HTTP {answer.status} from slot "
                             f"{answer.slot or '(no X-Bluegreen-Slot header)'}")

    def wait_front_door(self, slot: str) -> float:
        """Wait until the front door answers from `slot` with the healthy status; seconds
        it took."""
        start = time.monotonic()
        deadline = start + self.verify_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            answered, last = self.probe_front_door()
            if answered == slot and last.startswith(f"HTTP {self.cfg.health.status} "):
                return time.monotonic() - start
            time.sleep(0.01)
        raise BluegreenError(
            f"after the change, {self.door().url(self.cfg.verify_path)} did not answer "
            f"from slot {slot} within {self.verify_timeout:g}s (last: {last})",
            host=self.label, phase="verify", hint=self.verify_hint)

    def route_now(self, slot: str) -> bool:
        """Send every new request to `slot` at once, ahead of the file (a revert to a slot
        that was live seconds ago: the file follows through the usual change). False: this
        router can only change through its file."""
        del slot
        return False

    def counters(self) -> dict[str, SlotCounters] | None:
        """Per-slot counters since the router started; None: not available in this mode."""
        return None

    def set_preview(self, slot: str | None, digest: str = "") -> None:
        """Route requests that carry the preview token (whose sha1 is `digest`) to `slot`;
        None: no preview route."""
        raise Unsupported(f"{self.kind} mode has no preview route", host=self.label,
                          phase="switch", hint="use nginx.mode = \"lua\" for a preview route")

    def set_maintenance(self, message: str | None, retry_after: int = 60) -> None:
        """Answer every request at the front door with 503, Retry-After and `message`,
        without touching the slots; None: serve the live slot again."""
        raise Unsupported(f"{self.kind} mode has no maintenance page", host=self.label,
                          phase="maintenance")

    def maintenance(self) -> bool | None:
        """Whether the front door answers with the maintenance page now; None: unknown."""
        return None
