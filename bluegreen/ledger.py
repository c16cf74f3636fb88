"""The audit trail of one run: who asked, the lock they hold, state and history writes,
the user's hooks, and what a failure leaves behind (a history entry, the on-failure hook)."""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bluegreen import hooks, journal, lock
from bluegreen.config import Config
from bluegreen.errors import BluegreenError, LockHeld
from bluegreen.fleet import Fleet
from bluegreen.report import Reporter
from bluegreen.state import State, append_history, read_state, write_state


@dataclass(frozen=True)
class Who:
    """Who and what asked for this change, for the lock, the hooks and the audit trail."""

    name: str
    build_url: str = ""
    commit: str = ""

    @classmethod
    def from_env(cls, name: str = "", env: dict[str, str] | None = None) -> Who:
        env = dict(os.environ) if env is None else env
        if not name:
            name = env.get("BLUEGREEN_WHO", "")
        if not name and env.get("JENKINS_URL") and env.get("JOB_NAME"):
            name = f"jenkins:{env['JOB_NAME']}#{env.get('BUILD_NUMBER', '?')}"
        if not name:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = "unknown"
            name = f"{user}@{socket.gethostname()}"
        return cls(name=name,
                   build_url=env.get("BLUEGREEN_BUILD_URL") or env.get("BUILD_URL", ""),
                   commit=env.get("BLUEGREEN_COMMIT") or env.get("GIT_COMMIT", ""))


@dataclass
class Ledger:
    cfg: Config
    fleet: Fleet
    who: Who
    report: Reporter
    owner: lock.Owner | None = field(default=None)  # the lock this run holds
    lock_wait: float = 0.0  # seconds to wait for a lock a live run holds

    # ------------------------------------------------------------ the lock

    @contextmanager
    def locked(self, action: str) -> Iterator[None]:
        primary = self.fleet.primary
        self.owner = lock.new_owner(self.who.name, action, self.who.build_url)
        with lock.held(primary, self.fleet.layout(primary), self.owner, lease=self.lease,
                       wait=self.lock_wait, on_wait=self._waiting, on_break=self._broke):
            yield

    @property
    def lease(self) -> float:
        """The configured lease, but never shorter than the longest phase (the heartbeat is
        renewed between phases)."""
        c = self.cfg
        longest = max(c.health.timeout, c.drain_timeout + c.process.stop_timeout
                      + c.process.port_free_timeout) + 60
        return max(c.lock.lease, longest)

    def _waiting(self, holder: str) -> None:
        self.report.say(f"    lock held by {holder}: waiting up to {self.lock_wait:g}s")

    def _broke(self, broken: lock.Broken) -> None:
        held = broken.owner.describe() if broken.owner else "an unknown owner"
        self.report.say(f"    broke a stale lock held by {held}: {broken.reason}")
        self.record({"action": "unlock", "result": "ok", "automatic": True,
                     "reason": broken.reason,
                     "broken_lock": broken.owner.__dict__ if broken.owner else None})

    def heartbeat(self, phase: str | None = None) -> None:
        """The lock's holder shows it is alive, and which phase it is in (at each visible
        phase: the status page shows it live; between them at most every half minute)."""
        if self.owner is None or self.fleet.dry_run:
            return
        if phase is None and time.time() - self.owner.heartbeat < min(30.0, self.lease / 10):
            return  # fresh enough
        primary = self.fleet.primary
        try:
            self.owner = lock.heartbeat(primary, self.fleet.layout(primary), self.owner, phase)
        except LockHeld:
            raise  # broken by `fab unlock`: stop before changing anything more
        except BluegreenError as exc:  # the next phase's own step will say what is wrong
            self.report.say(f"    warning: could not renew the lock's heartbeat: {exc.what}")

    def ensure_still_locked(self) -> None:
        """Before traffic or state changes: the lock must still be this run's."""
        if self.owner is None:
            return
        primary = self.fleet.primary
        lock.ensure_ours(primary, self.fleet.layout(primary), self.owner)

    # ------------------------------------------------------------ state and history

    def read_state(self) -> State:
        primary = self.fleet.primary
        return read_state(primary, self.fleet.layout(primary), self.cfg.app)

    def save_state(self, state: State, *, failing: bool = False) -> None:
        """Record state. While handling a failure (`failing`), a failed write is a warning:
        the error being reported is the one the user must see, and traffic is untouched."""
        try:
            if not failing:
                self.ensure_still_locked()
            primary = self.fleet.primary
            write_state(primary, self.fleet.layout(primary), state)
        except BluegreenError as exc:
            if not failing:
                raise
            self.report.say(f"    warning: could not record the failed slot in state: "
                            f"{exc.what}")

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"at": time.time(), "who": self.who.name, "build_url": self.who.build_url,
                 "commit": self.who.commit, "app": self.cfg.app,
                 "hosts": [s.label for s in self.cfg.hosts.app],
                 "phases": {k: round(v, 3) for k, v in self.report.durations.items()},
                 **entry}
        primary = self.fleet.primary
        try:
            append_history(primary, self.fleet.layout(primary), entry)
        except BluegreenError as exc:  # the audit trail must not mask the real outcome
            self.report.say(f"    warning: could not append to history: {exc.what}")

    # ------------------------------------------------------------ the switch journal

    def read_intent(self) -> journal.Intent | None:
        primary = self.fleet.primary
        return journal.read(primary, self.fleet.layout(primary))

    def write_intent(self, intent: journal.Intent) -> None:
        primary = self.fleet.primary
        journal.write(primary, self.fleet.layout(primary), intent)

    def clear_intent(self) -> None:
        primary = self.fleet.primary
        try:
            journal.clear(primary, self.fleet.layout(primary))
        except BluegreenError as exc:  # the next command recovers (a no-op) and clears it
            self.report.say(f"    warning: could not clear the switch journal: {exc.what}")

    # ------------------------------------------------------------ hooks

    def hook_env(self, action: str, slot: str = "", release_id: str = "", version: str = "",
                 extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "BLUEGREEN_ACTION": action,
            "BLUEGREEN_APP": self.cfg.app,
            "BLUEGREEN_HOSTS": ",".join(s.label for s in self.cfg.hosts.app),
            "BLUEGREEN_TRAFFIC_HOSTS": ",".join(s.label for s in self.cfg.traffic_hosts),
            "BLUEGREEN_SLOT": slot,
            "BLUEGREEN_PORT": str(self.cfg.port_of(slot)) if slot else "",
            "BLUEGREEN_RELEASE": release_id,
            "BLUEGREEN_VERSION": version,
            "BLUEGREEN_WHO": self.who.name,
            "BLUEGREEN_BUILD_URL": self.who.build_url,
            "BLUEGREEN_COMMIT": self.who.commit,
            "BLUEGREEN_DRY_RUN": "1" if self.fleet.dry_run else "",
        }
        return {**env, **(extra or {})}

    def has_hook(self, name: str) -> bool:
        return hooks.hook_path(self.cfg, name).exists()

    def run_hook(self, name: str, env: dict[str, str]) -> None:
        plan = self.fleet.plan
        if plan is not None:
            if self.has_hook(name):
                hooks.check_hook(self.cfg, name)
                plan.add("local", f"run hook {name}", str(hooks.hook_path(self.cfg, name)))
            return
        hooks.run_hook(self.cfg, name, env)

    def on_failure(self, exc: BluegreenError, env: dict[str, str]) -> None:
        env = {**env, "BLUEGREEN_ERROR": exc.what.splitlines()[0],
               "BLUEGREEN_FAILED_PHASE": exc.phase, "BLUEGREEN_FAILED_HOST": exc.host}
        if not self.has_hook("on-failure"):
            return
        try:
            with self.report.phase("on-failure", "hook"):
                self.run_hook("on-failure", env)
        except BluegreenError as hook_exc:
            self.report.say(f"    warning: on-failure hook failed too: {hook_exc.what}")
