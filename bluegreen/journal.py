"""Intent records for traffic changes, so a run killed half-way (SIGKILL, a lost laptop, a
full disk) is put right by the next command, whatever it is.

Before the first traffic host is touched, the switch writes an intent on the primary host:
the operation, from and to slot, and per traffic host the file it is about to replace (its
text and checksum). Apply, verify, commit state, then clear the intent. An intent found by
a later command means the change never committed: `recover` puts every traffic host back to
the last committed state, records that in history, and clears it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host
from bluegreen.layout import Layout


def checksum(text: str | None) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text is not None else "none"


@dataclass
class Intent:
    action: str
    from_slot: str
    to_slot: str
    who: str
    previous: dict[str, str | None] = field(default_factory=dict)  # traffic host -> file
    previous_sum: dict[str, str] = field(default_factory=dict)
    new_sum: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: float = field(default_factory=time.time)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return (f"{self.action} {self.id} ({self.from_slot or 'nothing'} -> {self.to_slot}, "
                f"by {self.who}, started {when})")


def write(host: Host, layout: Layout, intent: Intent) -> None:
    host.write_atomic(layout.journal, json.dumps(asdict(intent), sort_keys=True) + "\n")


def read(host: Host, layout: Layout) -> Intent | None:
    text = host.read(layout.journal)
    if not text:
        return None
    try:
        return Intent(**json.loads(text))
    except (ValueError, TypeError) as exc:
        raise BluegreenError(
            f"the switch journal {layout.journal} is unreadable: {exc}", host=host.label,
            phase="recover",
            hint=f"a switch was interrupted; check `fab status`, then remove {layout.journal} "
                 "and run `fab switch --to <the slot the front door should serve>`") from exc


def clear(host: Host, layout: Layout) -> None:
    host.remove(layout.journal)
