"""The switch transaction: move every traffic host to one slot, all or nothing.

Safe order (FIELD-NOTES): render once; on every host install the file with the old one kept,
test it; only when every host passed, apply everywhere; then prove through each front door
that the new slot answers and scan the error log. Any failure, or an interrupt, puts the
previous file back (and re-applies it) on every host that had changed: either all of them
serve the new slot, or none does. How a file takes effect is the router's business
(routers/): a reload, or a flip of a shared dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from bluegreen import failpoints, lock
from bluegreen.config import Config
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.render import parse_marker
from bluegreen.routers.base import Applied, ConfigRejected, Router

T = TypeVar("T")
# another app's switch on a shared nginx takes seconds; waiting this long means it is stuck
TRAFFIC_LOCK_WAIT = 120.0
R = TypeVar("R")


def _parallel(items: list[T], fn: Callable[[T], R]) -> list[R]:
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _errors_of(fn: Callable[[T], object]) -> Callable[[T], BluegreenError | None]:
    def wrapped(item: T) -> BluegreenError | None:
        try:
            fn(item)
        except BluegreenError as exc:
            return exc
        return None
    return wrapped


def _raise_first(errors: list[BluegreenError | None]) -> None:
    for e in errors:
        if e is not None:
            raise e


@dataclass
class TrafficChange:
    """One move of the live slot across every traffic host."""

    cfg: Config
    routers: list[Router]
    slot: str
    release: str
    version: str
    owner: lock.Owner | None = None  # holds each traffic host's lock from apply to commit
    lock_wait: float = field(default_factory=lambda: TRAFFIC_LOCK_WAIT)
    applied: list[tuple[Router, Applied]] = field(default_factory=list)
    locked: list[Router] = field(default_factory=list)
    verified_in: float = 0.0
    committed: bool = False  # the new slot is recorded: nothing of it may be undone
    # told each traffic host's share of the change: (label, phase, seconds, error or None)
    on_host: Callable[[str, str, float, str | None], None] | None = None
    flips: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> start, end

    @property
    def skew_ms(self) -> float | None:
        """How far apart the traffic hosts flipped: from the first flip's start to the last
        flip's end (an upper bound: each flip took effect somewhere inside its window).
        None with fewer than two hosts."""
        if len(self.flips) < 2:
            return None
        starts = [a for a, _ in self.flips.values()]
        ends = [b for _, b in self.flips.values()]
        return round((max(ends) - min(starts)) * 1000, 2)

    def _timed(self, router: Router, phase: str, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        try:
            result = fn()
        except BluegreenError as exc:
            if self.on_host is not None:
                self.on_host(router.label, phase, time.monotonic() - start, exc.what)
            raise
        if self.on_host is not None:
            self.on_host(router.label, phase, time.monotonic() - start, None)
        return result

    @property
    def pending(self) -> bool:
        """Something was changed and is neither verified-and-committed nor undone."""
        return bool(self.applied)

    def lock_traffic_hosts(self, say: Callable[[str], None]) -> None:
        """Several apps may share one nginx: each holds the traffic host's own lock from
        install to commit, so its file is tested and applied only while every other app's
        file is its last good one, and the error log after its offset is its own. Taken in
        a fixed order (by host label): two apps never wait for each other in a circle."""
        if self.owner is None:
            return
        for router in sorted(self.routers, key=lambda r: r.label):
            where = traffic_lock_dir(router.target)
            broken = lock.acquire(router.host, where, self.owner, wait=self.lock_wait,
                                  on_wait=lambda held, r=router: say(
                                      f"    {r.label}: waiting for {held} to finish its "
                                      "switch on this nginx"))
            self.locked.append(router)
            if broken is not None:
                say(f"    {router.label}: broke a stale traffic lock ({broken.reason})")

    def unlock_traffic_hosts(self) -> None:
        for router in self.locked:
            try:
                lock.release(router.host, traffic_lock_dir(router.target), self.owner)  # type: ignore[arg-type]
            except BluegreenError:
                pass  # stale by its pid (this machine) or its lease: the next run breaks it
        self.locked.clear()

    def apply(self) -> None:
        """Render, install and test everywhere; then apply everywhere. Raises (after undoing)
        on the first rejection; an interrupt leaves `applied` for the caller's undo."""
        generation = max([int(time.time() * 1000)]
                         + [r.generation_floor() + 1 for r in self.routers])
        # rendered per router: in nginx.mode = "auto" one host may switch by lua and
        # another by reload, each from its own template
        texts = {id(r): r.render(self.slot, self.release, self.version, generation)
                 for r in self.routers}
        shapes = {key: parse_marker(text).shape  # type: ignore[union-attr]
                  for key, text in texts.items()}
        at_once = len(self.routers) == 1 and self.routers[0].tests_and_applies_at_once

        def install_and_test(router: Router) -> BluegreenError | None:
            return self._timed(router, "switch", lambda: _install_and_test(router))

        def _install_and_test(router: Router) -> BluegreenError | None:
            router.host.phase = "switch"
            try:
                applied = router.install(texts[id(router)])
            except BluegreenError as exc:
                return exc
            # From here on the host holds our file: every way out must be able to undo it.
            self.applied.append((router, applied))
            failpoints.hit("switch.after-install")
            try:
                router.test(applied, and_apply=at_once)
            except ConfigRejected as exc:  # the router put its previous file back already
                self.applied.remove((router, applied))
                return exc
            except BluegreenError as exc:
                return exc
            return None

        _raise_first(_parallel(self.routers, install_and_test))
        if not at_once:
            _raise_first(_parallel(self.applied, _errors_of(
                lambda ra: self._flip(ra, shapes[id(ra[0])]))))
        failpoints.hit("switch.after-apply")

    def _flip(self, ra: tuple[Router, Applied], shape: str) -> None:
        router, applied = ra

        def go() -> None:
            start = time.monotonic()
            router.apply(applied, self.slot, shape)
            self.flips[router.label] = (start, time.monotonic())
        self._timed(router, "switch", go)

    def verify(self) -> None:
        start = time.monotonic()
        _raise_first(_parallel(self.applied, _errors_of(
            lambda ra: self._timed(ra[0], "verify", lambda: ra[0].verify(ra[1], self.slot)))))
        self.verified_in = time.monotonic() - start

    def commit(self) -> None:
        """The new slot is recorded: nothing left to undo."""
        self.committed = True
        self.applied.clear()
        self.unlock_traffic_hosts()

    def undo(self) -> str:
        """Put back what every host had; report, never raise over the original error."""
        if not self.applied:
            self.unlock_traffic_hosts()
            return "traffic was not touched"
        problems = []
        for router, applied in self.applied:
            try:
                router.restore(applied)
            except (BluegreenError, CommandFailed, OSError) as exc:
                problems.append(f"{router.label}: {exc}")
        labels = [r.label for r, _ in self.applied]
        product = self.applied[0][0].product
        self.applied.clear()
        self.unlock_traffic_hosts()
        if problems:
            return (f"the previous {product} config could NOT be restored on: "
                    + "; ".join(problems) + f" - fix {product} there by hand NOW")
        return f"the previous {product} config was restored on " + ", ".join(labels)


def traffic_lock_dir(target: str) -> str:
    """Beside the file bluegreen renders (a directory the deploy user can write; nginx
    includes only *.conf there)."""
    parent, _, _ = target.rpartition("/")
    return f"{parent or '.'}/.bluegreen-traffic.lock"


def drain(routers: list[Router], port: int, timeout: float) -> dict[str, int] | None:
    """Wait until no router has a request in flight to `port`. Returns what was left per
    host when the timeout expired (empty when drained), or None when some router cannot
    count requests: then the caller drains by connection count on the app hosts."""
    counts = _parallel(routers, lambda r: r.inflight(port))
    if any(n is None for n in counts):
        return None

    def one(r: Router) -> tuple[str, int]:
        return r.label, r.wait_drained(port, timeout)
    return {label: n for label, n in _parallel(routers, one) if n}
