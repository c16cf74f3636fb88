"""One slot across every app host: drain and stop it, start a release in it, wait until it
is healthy, read its log. The phases call these; the backends do the per-host work."""

from __future__ import annotations

from dataclasses import dataclass

from bluegreen import commands, failpoints, health, traffic
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import Host
from bluegreen.process import Backend, backend_for
from bluegreen.report import Reporter
from bluegreen.routers.base import Router


@dataclass
class Slots:
    cfg: Config
    fleet: Fleet
    routers: list[Router]
    report: Reporter

    @property
    def backend(self) -> Backend:
        return backend_for(self.cfg)

    def stop(self, slot: str) -> str:
        """Drain, stop and free the slot on every app host: one round trip per host.

        Draining first means the router has nothing in flight to the slot when it stops,
        bounded by the drain timeout; what is cut then is reported.
        """
        backend, port = self.backend, self.cfg.port_of(slot)
        conn_drain = self.cfg.drain_timeout
        # a router that counts requests in flight drains exactly those; idle pooled upstream
        # connections would keep a connection count from ever reaching 0
        in_flight = traffic.drain(self.routers, port, conn_drain)
        if in_flight is not None:
            self._report_cut("requests still in flight", port,
                             [f"{h}: {n}" for h, n in in_flight.items()])
            conn_drain = 0
        failpoints.hit("stop.drained")

        def one(h: Host) -> commands.StopReport:
            out = h.run(commands.drain_stop_free(
                port, conn_drain, backend.stop_script(h, slot),
                self.cfg.process.port_free_timeout),
                timeout=self.cfg.drain_timeout + self.cfg.process.stop_timeout
                + self.cfg.process.port_free_timeout + 30,
                says=f"drain and stop slot {slot} (port {port}), check the port is free",
                hint=f"bluegreen never kills what it did not start: stop that process, or "
                     f"move slots.{slot} to a free port").stdout
            return commands.parse_drain_stop_free(out)
        app_hosts = self.fleet.app_hosts
        results = self.fleet.on_all(app_hosts, "stop", one)
        self._report_cut("connections cut", port, [
            f"{h.label}: {r.connections_left}"
            for h, r in zip(app_hosts, results, strict=True) if r.connections_left])
        return ", ".join(sorted({r.outcome for r in results}))

    def stop_quietly(self, slot: str) -> None:
        try:
            self.stop(slot)
        except BluegreenError as exc:
            self.report.say(f"    warning: could not stop slot {slot}: {exc.what}")

    def _report_cut(self, what: str, port: int, per_host: list[str]) -> None:
        if per_host:
            # what outlived the drain is long-lived by definition (WebSockets, streams):
            # stopping the slot closes it now, and the count says how many clients noticed
            total = sum(int(entry.rsplit(": ", 1)[1]) for entry in per_host)
            self.report.say(f"    drain timeout ({self.cfg.drain_timeout:g}s) expired; "
                            f"{what} on port {port}: {', '.join(per_host)}; {total} "
                            f"long-lived connection{'s' if total != 1 else ''} closed at "
                            "drain timeout")

    def start(self, slot: str, release_id: str, version: str, artifact_name: str) -> None:
        backend = self.backend
        self.fleet.on_all(self.fleet.app_hosts, "start", lambda h: backend.start(
            h, slot, self.fleet.layout(h).release(release_id), version, artifact_name))

    def wait_healthy(self, slot: str) -> health.HealthReport:
        """All app hosts healthy; the slowest host's report."""
        backend, port = self.backend, self.cfg.port_of(slot)
        reports = self.fleet.on_all(self.fleet.app_hosts, "health", lambda h: health.wait_healthy(
            h, port, self.cfg.health, alive=lambda: backend.running(h, slot)))
        return max(reports, key=lambda r: r.elapsed)

    def not_running_on(self, slot: str, phase: str = "health") -> list[str]:
        """Hosts where the slot's process is not running: asked of every host at once. A
        host that cannot be asked fails the run in `phase` (the watch's, during a watch)."""
        backend, hosts = self.backend, self.fleet.app_hosts
        up = self.fleet.on_all(hosts, phase, lambda h: backend.running(h, slot))
        return [h.label for h, running in zip(hosts, up, strict=True) if not running]

    def last_logs(self, slot: str, lines: int = 20) -> str:
        chunks = []
        for h in self.fleet.app_hosts:
            try:
                text = self.backend.logs(h, slot, lines).rstrip()
            except BluegreenError as exc:
                text = f"(could not read the log: {exc.what})"
            chunks.append(f"  --- last log lines of {slot} on {h.label} ---\n"
                          + ("\n".join("  | " + line for line in text.splitlines())
                             or "  | (empty)"))
        return "\n".join(chunks)
