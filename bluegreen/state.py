"""What is live and what runs where: recorded state, never guessed from traffic.

state.json (small, rewritten atomically) says which slot is live and which release each slot
holds. history.jsonl is append-only, one JSON object a line, so status and deploy cost stay
flat however long the history grows: we only ever read its tail.
Both live on the primary host (the first traffic host), beside the lock.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host
from bluegreen.layout import Layout

STATE_VERSION = 1


@dataclass
class SlotRecord:
    release: str = ""
    version: str = ""
    checksum: str = ""
    artifact: str = ""  # file name inside the release, for {artifact} on a restart
    deployed_at: float = 0.0
    status: str = "empty"  # empty | starting | running | failed | vetoed | bad


@dataclass
class HostLive:
    """One host that serves another slot than `State.live` (a rolling deploy under way)."""

    live: str = ""
    release: str = ""
    version: str = ""
    at: float = 0.0


@dataclass
class Rollout:
    """A rolling deploy (`--batch`) that has not switched every host yet: what it ships,
    which hosts already serve it, which failed. A second run of the same release resumes."""

    release: str = ""
    version: str = ""
    checksum: str = ""
    artifact: str = ""
    slot: str = ""  # the slot the rollout moves hosts to
    from_slot: str = ""
    batch: str = ""  # as asked: "25%" or "2"
    done: list[str] = field(default_factory=list)  # hosts switched to `slot`
    failed: dict[str, str] = field(default_factory=dict)  # host -> "phase: what"
    # running | stopped (kept partial, or interrupted) | incomplete (hosts failed) | done
    status: str = "running"
    who: str = ""
    started_at: float = 0.0


@dataclass
class State:
    app: str
    live: str = ""  # "" until the first successful switch
    previous: str = ""  # the slot that was live before `live`
    # what was live before `live`: rollback's target, kept apart from the slot records because
    # a failed deploy may have reused that slot since
    previous_release: SlotRecord = field(default_factory=SlotRecord)
    slots: dict[str, SlotRecord] = field(
        default_factory=lambda: {"blue": SlotRecord(), "green": SlotRecord()})
    # releases the watch window reverted, by checksum -> why: never rolled back to, and a
    # deploy of the same artifact needs --force
    bad_releases: dict[str, str] = field(default_factory=dict)
    serial: int = 0  # bumps on every write: a cheap way to see concurrent edits
    updated_at: float = 0.0
    # hosts that serve another slot than `live`, while a rolling deploy is under way or
    # was kept partial; empty otherwise (and in every state file before rolling deploys)
    hosts: dict[str, HostLive] = field(default_factory=dict)
    rollout: Rollout | None = None

    @property
    def idle(self) -> str:
        return "green" if self.live == "blue" else "blue"

    def live_on(self, label: str) -> str:
        """The slot `label` serves: its own record during a rollout, else `live`."""
        rec = self.hosts.get(label)
        return rec.live if rec is not None else self.live

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = STATE_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, app: str) -> State:
        data = json.loads(text)
        data.pop("format", None)
        slots = {name: SlotRecord(**rec) for name, rec in data.pop("slots", {}).items()}
        data["previous_release"] = SlotRecord(**data.get("previous_release", {}))
        for name in ("blue", "green"):
            slots.setdefault(name, SlotRecord())
        # both absent from state files written before rolling deploys
        data["hosts"] = {k: HostLive(**v) for k, v in (data.get("hosts") or {}).items()}
        rollout = data.get("rollout")
        data["rollout"] = Rollout(**rollout) if rollout else None
        return cls(**{**data, "app": data.get("app", app), "slots": slots})


def read_state(host: Host, layout: Layout, app: str) -> State:
    text = host.read(layout.state)
    if text is None:
        return State(app=app)
    try:
        return State.from_json(text, app)
    except (ValueError, TypeError) as exc:
        raise BluegreenError(
            f"state file {layout.state} is corrupt: {exc}", host=host.label, phase="state",
            hint=f"nothing was changed; `fab status` shows what the routers and the slots "
                 f"really do, and `fab history` what was deployed: restore {layout.state} "
                 "from that (or a backup) by hand, then re-run") from exc


def write_state(host: Host, layout: Layout, state: State) -> None:
    state.serial += 1
    state.updated_at = time.time()
    host.write_atomic(layout.state, state.to_json())


def append_history(host: Host, layout: Layout, entry: dict[str, Any]) -> None:
    host.append_line(layout.history, json.dumps(entry, sort_keys=True))


TAIL_BYTES_PER_ENTRY = 4096  # generous: an entry is a few hundred bytes


def read_history(host: Host, layout: Layout, last: int = 20) -> list[dict[str, Any]]:
    """The last entries, reading only the file's tail: cost is flat in history length."""
    size = host.size(layout.history)
    offset = max(0, size - last * TAIL_BYTES_PER_ENTRY)
    text = host.read(layout.history, offset=offset, limit=size - offset + 1) or ""
    lines = text.splitlines()
    if offset:
        lines = lines[1:]  # the first line is probably cut
    entries = []
    for line in lines[-last:]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"action": "?", "result": "unparseable history line", "raw": line})
    return entries
