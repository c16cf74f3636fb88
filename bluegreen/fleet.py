"""The hosts of one run: opened once, reused for every step, fanned out with a bound, closed.

A dry run's fleet hands out DryRunHosts over the real ones: the flow does not know it is a
dry run, except for the phases that only observe effects (health, verify), which the phase
runner replaces by a line in the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from bluegreen import failpoints
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.hosts import DryRunHost, Host, open_host
from bluegreen.layout import Layout
from bluegreen.plan import Plan

T = TypeVar("T")
DEFAULT_PARALLEL = 32  # hosts acted on at once; each holds one SSH connection


@dataclass
class Fleet:
    cfg: Config
    plan: Plan | None = None  # set: a dry run, changes go to the plan
    parallel: int = DEFAULT_PARALLEL
    opener: Callable[[HostSpec, Config], Host] = open_host  # tests pass a recording fake
    _hosts: dict[HostSpec, Host] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return self.plan is not None

    def host(self, spec: HostSpec) -> Host:
        if spec not in self._hosts:
            real = self.opener(spec, self.cfg)
            failpoints.track(real)  # the fault suite's `drop` cuts its connection
            self._hosts[spec] = real if self.plan is None else DryRunHost(real, self.plan)
        return self._hosts[spec]

    @property
    def app_hosts(self) -> list[Host]:
        return [self.host(s) for s in self.cfg.hosts.app]

    @property
    def traffic_hosts(self) -> list[Host]:
        return [self.host(s) for s in self.cfg.traffic_hosts]

    @property
    def primary(self) -> Host:
        """Where the lock, state, history and the switch journal live."""
        return self.host(self.cfg.primary)

    @staticmethod
    def layout(host: Host) -> Layout:
        return Layout(host.root)

    def on_all(self, hosts: list[Host], phase: str, fn: Callable[[Host], T]) -> list[T]:
        """Run fn on every host, at most `parallel` at once; if any fail, raise one error
        naming all of them (results keep the hosts' order)."""
        def wrapped(h: Host) -> T | BluegreenError:
            h.phase = phase
            try:
                return fn(h)
            except BluegreenError as exc:
                exc.host = exc.host or h.label
                exc.phase = exc.phase or phase
                return exc
        if len(hosts) == 1:
            results = [wrapped(hosts[0])]
        else:
            with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(hosts)))) as pool:
                results = list(pool.map(wrapped, hosts))
        errors = [r for r in results if isinstance(r, BluegreenError)]
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise BluegreenError(
                f"{len(errors)} of {len(hosts)} hosts failed in {phase}:\n  "
                + "\n  ".join(e.render().replace("\n", "\n  ") for e in errors),
                host=",".join(e.host for e in errors), phase=phase, hint=errors[0].hint)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for h in self._hosts.values():
            h.close()
        self._hosts.clear()
