"""The deploy lock: an atomic mkdir on the primary host, with an owner record.

The owner record says who holds it, from which machine (hostname and boot id), which pid
with which start time, and when the holder last showed it was alive (its heartbeat, renewed
at every phase). A lock cannot get stuck:
- an owner on this machine whose pid (with that start time) is gone is dead: its lock is
  broken at once;
- an owner elsewhere whose heartbeat is older than the lease is taken over;
- a lock directory with no owner record (a crash between mkdir and the write) is broken
  once it is older than a minute.
Each break is said in the output and recorded in history by the new holder. Release checks
a random token, so a run whose lock was broken never removes the next run's lock.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bluegreen.errors import BluegreenError, LockHeld
from bluegreen.hosts import Host
from bluegreen.layout import Layout

log = logging.getLogger("bluegreen.lock")
OWNERLESS_GRACE = 60.0  # seconds a lock dir may lack its owner record (being written)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_start(pid: int) -> str:
    """Field 22 of /proc/PID/stat: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else ""


@dataclass(frozen=True)
class Owner:
    who: str
    action: str
    token: str
    started_at: float
    machine: str
    pid: int
    build_url: str = ""
    pid_start: str = ""
    boot_id: str = ""
    heartbeat: float = 0.0
    phase: str = ""  # what the holder is doing now (the status page shows it live)
    phase_started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self, now: float | None = None) -> str:
        now = now or time.time()
        age = now - self.started_at
        where = f"{self.machine} pid {self.pid}"
        build = f", {self.build_url}" if self.build_url else ""
        beat = f", alive {now - self.heartbeat:.0f}s ago" if self.heartbeat else ""
        return f"{self.who} ({self.action}, from {where}{build}, {age:.0f}s ago{beat})"

    def stale_because(self, lease: float, now: float | None = None) -> str:
        """Why this owner is certainly gone, or "" when it may be alive."""
        now = now or time.time()
        if self.machine == socket.gethostname() and self.boot_id and self.boot_id == _boot_id():
            if pid_start(self.pid) != self.pid_start:
                return f"its process {self.pid} on this machine is gone"
            return ""
        if not self.heartbeat:
            return ""  # a record without a heartbeat (an older bluegreen): liveness unknown
        if now - self.heartbeat > lease:
            return f"its heartbeat is {now - self.heartbeat:.0f}s old (lease {lease:g}s)"
        return ""


def new_owner(who: str, action: str, build_url: str = "") -> Owner:
    now = time.time()
    return Owner(who=who, action=action, token=uuid.uuid4().hex, started_at=now,
                 machine=socket.gethostname(), pid=os.getpid(), build_url=build_url,
                 pid_start=pid_start(os.getpid()), boot_id=_boot_id(), heartbeat=now)


def parse_owner(text: str) -> Owner | None:
    try:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in Owner.__dataclass_fields__}
        return Owner(**known)
    except (ValueError, TypeError):
        return None


def _dir(where: Layout | str) -> str:
    """The deploy lock lives in a Layout; a traffic host's lock is a plain directory."""
    return where if isinstance(where, str) else where.lock


def _owner_path(where: Layout | str) -> str:
    return f"{_dir(where)}/owner.json"


@dataclass(frozen=True)
class Broken:
    """A stale lock this run broke on its way in: said and recorded by the caller."""

    owner: Owner | None
    reason: str


def acquire(host: Host, layout: Layout | str, owner: Owner, *, lease: float = 300.0,
            wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Broken | None:
    """Take the lock; break it first when its owner is certainly gone; wait up to `wait`
    seconds for a live owner. Returns what was broken, if anything."""
    deadline = time.monotonic() + wait
    broken: Broken | None = None
    said = False
    while True:
        if host.mkdir_exclusive(_dir(layout)):
            try:
                host.write_atomic(_owner_path(layout), owner.to_json() + "\n")
            except BluegreenError:
                host.remove(_dir(layout), directory=True)  # an ownerless lock would stay
                raise
            return broken
        held_by = parse_owner(host.read(_owner_path(layout)) or "")
        reason = _stale(host, layout, held_by, lease)
        if reason and broken is None:
            _remove(host, layout)
            broken = Broken(held_by, reason)
            continue
        if time.monotonic() < deadline:
            if on_wait is not None and not said:
                on_wait(held_by.describe() if held_by else "an unknown owner")
                said = True
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
            continue
        who = held_by.describe() if held_by else "an unknown owner (no owner record yet)"
        raise LockHeld(f"another deploy holds the lock {_dir(layout)}: {who}", host=host.label,
                       phase="lock",
                       hint="wait for it to finish, or re-run with --lock-wait SECONDS; "
                            "if it is dead, run `fab unlock`")


def _stale(host: Host, layout: Layout | str, held_by: Owner | None, lease: float) -> str:
    if held_by is not None:
        return held_by.stale_because(lease)
    # no owner record: a crash between mkdir and the write, or a write in progress
    age = _dir_age(host, _dir(layout))
    return f"it has had no owner record for {age:.0f}s" if age > OWNERLESS_GRACE else ""


def _dir_age(host: Host, path: str) -> float:
    quoted = shlex.quote(path)
    out = host.run(f"echo $(( $(date +%s) - $(stat -c %Y {quoted} 2>/dev/null || date +%s) ))",
                   timeout=30, check=False, mutates=False).stdout.strip()
    return float(out) if out.lstrip("-").isdigit() else 0.0


def heartbeat(host: Host, layout: Layout | str, owner: Owner, phase: str | None = None) -> Owner:
    """Show the lock's holder is alive (and what it does now): rewrite its record, only
    while it is still ours: after `fab unlock` a heartbeat must not take the lock back."""
    ensure_ours(host, layout, owner)
    now = time.time()
    beat = replace(owner, heartbeat=now) if phase is None else \
        replace(owner, heartbeat=now, phase=phase, phase_started_at=now)
    host.write_atomic(_owner_path(layout), beat.to_json() + "\n")
    return beat


def ensure_ours(host: Host, layout: Layout | str, owner: Owner) -> None:
    """Before a change: is the lock still ours? `fab unlock` on a run that was in fact
    alive lets a second deploy in; two writers must not both switch."""
    held_by = status(host, layout)
    if held_by is None or held_by.token != owner.token:
        raise LockHeld(
            "the deploy lock was broken while this run held it"
            + (f"; it is now held by {held_by.describe()}" if held_by else ""),
            host=host.label, phase="lock",
            hint="someone ran `fab unlock`: nothing more was changed by this run; check "
                 "`fab status`, then re-run")


def release(host: Host, layout: Layout | str, owner: Owner) -> None:
    """Remove the lock only if it is still ours: `fab unlock` may have broken it meanwhile
    and someone else may hold a new one."""
    held_by = parse_owner(host.read(_owner_path(layout)) or "")
    if held_by is not None and held_by.token == owner.token:
        _remove(host, layout)


def break_lock(host: Host, layout: Layout | str) -> Owner | None:
    owner = parse_owner(host.read(_owner_path(layout)) or "")
    _remove(host, layout)
    return owner


def _remove(host: Host, layout: Layout | str) -> None:
    host.remove(_owner_path(layout))
    host.remove(_dir(layout), directory=True)


def status(host: Host, layout: Layout | str) -> Owner | None:
    text = host.read(_owner_path(layout))
    return parse_owner(text) if text else None


@contextmanager
def held(host: Host, layout: Layout | str, owner: Owner, *, lease: float = 300.0,
         wait: float = 0.0, on_wait: Callable[[str], None] | None = None,
         on_break: Callable[[Broken], None] | None = None) -> Iterator[Owner]:
    """Hold the lock for a block; released on success, failure and Ctrl-C alike.

    When the block failed, a failing release (say, the SSH link is gone) is only a warning:
    the original error is what the user must see; the warning says to `fab unlock`.
    """
    broken = acquire(host, layout, owner, lease=lease, wait=wait, on_wait=on_wait)
    if broken is not None and on_break is not None:
        on_break(broken)
    try:
        yield owner
    except BaseException:
        try:
            release(host, layout, owner)
        except BluegreenError as exc:
            log.warning("could not release the deploy lock %s on %s (%s): the next run from "
                        "this machine breaks it by itself (this process is gone by then); "
                        "from elsewhere, run `fab unlock` once the host is reachable",
                        _dir(layout), host.label, exc.what)
        raise
    release(host, layout, owner)
