"""The deploy lock: an atomic mkdir on the primary host, with an owner record.

Refusals name the owner and the way out (`fab unlock`). Release checks a random token, so a
deploy whose lock was broken by `fab unlock` never removes the next deploy's lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bluegreen.errors import BluegreenError, LockHeld
from bluegreen.hosts import Host
from bluegreen.layout import Layout

log = logging.getLogger("bluegreen.lock")


@dataclass(frozen=True)
class Owner:
    who: str
    action: str
    token: str
    started_at: float
    machine: str
    pid: int
    build_url: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.started_at
        where = f"{self.machine} pid {self.pid}"
        build = f", {self.build_url}" if self.build_url else ""
        return f"{self.who} ({self.action}, from {where}{build}, {age:.0f}s ago)"


def new_owner(who: str, action: str, build_url: str = "") -> Owner:
    return Owner(who=who, action=action, token=uuid.uuid4().hex, started_at=time.time(),
                 machine=socket.gethostname(), pid=os.getpid(), build_url=build_url)


def parse_owner(text: str) -> Owner | None:
    try:
        return Owner(**json.loads(text))
    except (ValueError, TypeError):
        return None


def acquire(host: Host, layout: Layout, owner: Owner) -> None:
    if host.mkdir_exclusive(layout.lock):
        try:
            host.write_atomic(f"{layout.lock}/owner.json", owner.to_json() + "\n")
        except BluegreenError:
            host.remove(layout.lock, directory=True)  # an ownerless lock would stay forever
            raise
        return
    held_by = parse_owner(host.read(f"{layout.lock}/owner.json") or "")
    who = held_by.describe() if held_by else "an unknown owner (no owner record yet)"
    raise LockHeld(f"another deploy holds the lock {layout.lock}: {who}", host=host.label,
                   phase="lock", hint="wait for it to finish; if it is dead, run `fab unlock`")


def release(host: Host, layout: Layout, owner: Owner) -> None:
    """Remove the lock only if it is still ours: `fab unlock` may have broken it meanwhile
    and someone else may hold a new one."""
    held_by = parse_owner(host.read(f"{layout.lock}/owner.json") or "")
    if held_by is not None and held_by.token == owner.token:
        _remove(host, layout)


def break_lock(host: Host, layout: Layout) -> Owner | None:
    owner = parse_owner(host.read(f"{layout.lock}/owner.json") or "")
    _remove(host, layout)
    return owner


def _remove(host: Host, layout: Layout) -> None:
    host.remove(f"{layout.lock}/owner.json")
    host.remove(layout.lock, directory=True)


def status(host: Host, layout: Layout) -> Owner | None:
    text = host.read(f"{layout.lock}/owner.json")
    return parse_owner(text) if text else None


@contextmanager
def held(host: Host, layout: Layout, owner: Owner) -> Iterator[Owner]:
    """Hold the lock for a block; released on success, failure and Ctrl-C alike.

    When the block failed, a failing release (say, the SSH link is gone) is only a warning:
    the original error is what the user must see; the warning says to `fab unlock`.
    """
    acquire(host, layout, owner)
    try:
        yield owner
    except BaseException:
        try:
            release(host, layout, owner)
        except BluegreenError as exc:
            log.warning("could not release the deploy lock %s on %s (%s): run `fab unlock` "
                        "once the host is reachable", layout.lock, host.label, exc.what)
        raise
    release(host, layout, owner)
