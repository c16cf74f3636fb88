"""Deterministic fault injection for the fault suite (tests/faults): named points in the
flow where a test can make this very process die, be interrupted, lose its SSH links, fill
its disk or pause.

    BLUEGREEN_FAILPOINTS="switch.after-install=kill"
    BLUEGREEN_FAILPOINTS="before:upload=term,health.probing=drop"
    BLUEGREEN_FAILPOINTS="upload.mid=fill:/srv/bluegreen"
    BLUEGREEN_FAILPOINTS="before:switch=hold:/tmp/held"

Each item is POINT=ACTION[:ARG]; items are separated by commas. Actions:

    kill          SIGKILL this process (nothing runs after it: a power cut, `kill -9`)
    term          SIGTERM this process: the real handler runs (interrupts.py), as when
                  Jenkins aborts a build
    drop          cut every open SSH connection of this run, as a dropped link would: the
                  socket is shut down and the client has noticed before the next step
    fill:DIR      fill the filesystem holding DIR (a ballast file DIR/.failpoint-ballast)
                  until a write fails with ENOSPC; refused when more than FILL_LIMIT is
                  free, so it can only ever fill a small test filesystem (a tmpfs)
    hold:FILE     create FILE (it holds our pid) and wait until someone removes it (at
                  most HOLD_LIMIT seconds): a test acts at that exact point, then lets go

Points are named where they are hit: `before:<phase>` and `after:<phase>` in the phase loop
(run.py), and a few inside phases (upload.writing (SSH hosts, after the first block),
upload.mid, upload.unpacked, stop.drained, health.probing, switch.after-intent,
switch.after-install, switch.after-apply, record.after-state). A point acts on its first hit only.

The variable is read once, at import. When it is unset, `hit` returns at its first test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

ENV = "BLUEGREEN_FAILPOINTS"
ACTIONS = ("kill", "term", "drop", "fill", "hold")
FILL_LIMIT = 256 * 1024 * 1024  # never fill a filesystem with more than this free
HOLD_LIMIT = 120.0  # seconds a hold waits at most
BALLAST = ".failpoint-ballast"


@dataclass(frozen=True)
class Action:
    kind: str
    arg: str = ""


def parse(spec: str) -> dict[str, Action]:
    """`POINT=ACTION[:ARG],...` -> {point: Action}. Raises ValueError on a bad item."""
    points: dict[str, Action] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name or not action:
            raise ValueError(f"{ENV}: {item!r} is not POINT=ACTION")
        kind, _, arg = action.partition(":")
        if kind not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {kind!r} in {item!r} "
                             f"(one of {', '.join(ACTIONS)})")
        if kind in ("fill", "hold") and not arg:
            raise ValueError(f"{ENV}: {kind} needs a path: {name}={kind}:PATH")
        if kind in ("kill", "term", "drop") and arg:
            raise ValueError(f"{ENV}: {kind} takes no argument, got {arg!r}")
        if name in points:
            raise ValueError(f"{ENV}: point {name!r} is named twice")
        points[name] = Action(kind, arg)
    return points


_points: dict[str, Action] = parse(os.environ.get(ENV, ""))
_fired: set[str] = set()
_lock = threading.Lock()
_hosts: weakref.WeakSet[Any] = weakref.WeakSet()  # the run's hosts, for `drop`


def configure(spec: str) -> None:
    """Replace the points (tests of this module; a run reads the environment once)."""
    global _points
    _points = parse(spec)
    _fired.clear()


def track(host: Any) -> None:
    """Remember a host of this run, so that `drop` can cut its connection."""
    if _points:
        _hosts.add(host)


def hit(name: str) -> None:
    """The flow passes point `name`: act if the environment asked for it (once)."""
    if not _points:
        return
    action = _points.get(name)
    if action is None:
        return
    with _lock:
        if name in _fired:
            return
        _fired.add(name)
    _act(name, action)


def _act(name: str, action: Action) -> None:
    said = f"failpoint {name}: {action.kind}"
    if action.kind == "drop":
        said += f" ({drop_connections()} SSH connection(s) cut)"
    print(said, file=sys.stderr, flush=True)  # the suite checks the point was reached
    if action.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(5)  # the signal is delivered before this returns; never go on
    elif action.kind == "term":
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
    elif action.kind == "fill":
        fill(action.arg)
    elif action.kind == "hold":
        hold(action.arg, name)


def drop_connections() -> int:
    """Shut down the socket under every open SSH connection and wait (bounded) until the
    client has noticed. Returns how many were cut."""
    cut = 0
    for host in list(_hosts):
        conn = getattr(host, "_conn", None)
        transport = getattr(conn, "transport", None) if conn is not None else None
        if transport is None or not transport.is_active():
            continue
        with contextlib.suppress(OSError):
            transport.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5.0
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        cut += 1
    return cut


def fill(directory: str) -> int:
    """Write a ballast file under `directory` until its filesystem is full; bytes written.
    Refuses (ValueError) when more than FILL_LIMIT is free: only a small test filesystem."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free > FILL_LIMIT:
        raise ValueError(f"{ENV}: refusing to fill {directory}: {free} bytes free "
                         f"(more than {FILL_LIMIT}); use a small tmpfs")
    written = 0
    fd = os.open(os.path.join(directory, BALLAST), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):  # big blocks, then down to the last byte
            block = b"\0" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def hold(path: str, name: str) -> None:
    """Create `path` and wait until it is removed (at most HOLD_LIMIT seconds)."""
    with open(path, "w") as f:
        f.write(f"{os.getpid()} {name}\n")
    deadline = time.monotonic() + HOLD_LIMIT
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
