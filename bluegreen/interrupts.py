"""Stopping a run safely: a SIGTERM (Jenkins' abort) or Ctrl-C never cuts a remote step in
half, and no step starts after the run decided to stop.

While steps are in flight (in any thread), a signal only marks the run as stopping; each
step ends normally (bounded by its own timeout), the main thread raises KeyboardInterrupt at
its next step boundary, and the flow undoes what is pending. A second signal stops at once.
Cleanup (undoing a switch, recording, releasing the lock) runs with steps allowed again.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_in_flight = 0
_requested = False
_cleaning_up = 0
_installed = False


def install() -> None:
    """Route SIGTERM and SIGINT through `_handler` (main thread only; idempotent)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    _installed = True


def reset() -> None:
    global _requested, _in_flight, _cleaning_up
    with _lock:
        _requested, _in_flight, _cleaning_up = False, 0, 0


def _handler(signum: int, frame: object) -> None:
    global _requested
    with _lock:
        # a step in flight, or a commit/cleanup that must finish whole: wait for it
        busy = (_in_flight > 0 or _cleaning_up > 0) and not _requested
        _requested = True
    if not busy:
        raise KeyboardInterrupt
    print(f"\n{signal.Signals(signum).name}: stopping once the remote steps in flight finish "
          "(signal again to stop at once)", file=sys.stderr, flush=True)


def requested() -> bool:
    return _requested


def checkpoint() -> None:
    """At a step boundary in the main thread: stop here if a signal asked to."""
    if _requested and not _cleaning_up and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


@contextmanager
def step() -> Iterator[None]:
    """One remote step. Refused once the run is stopping (unless cleaning up); a signal
    arriving meanwhile waits for it to end."""
    global _in_flight
    if _requested and not _cleaning_up:
        raise KeyboardInterrupt
    with _lock:
        _in_flight += 1
    try:
        yield
    finally:
        with _lock:
            _in_flight -= 1
    checkpoint()


@contextmanager
def uninterruptible() -> Iterator[None]:
    """A few steps that must finish together (a commit): a signal waits for the end of the
    block and is acted on at the next step boundary."""
    with cleaning_up():
        yield


@contextmanager
def cleaning_up() -> Iterator[None]:
    """Undo, record and unlock: steps are allowed again, and a signal cannot cut them."""
    global _cleaning_up
    with _lock:
        _cleaning_up += 1
    try:
        yield
    finally:
        with _lock:
            _cleaning_up -= 1
