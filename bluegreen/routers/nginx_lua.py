"""nginx with the lua module: the rendered file stays the persistent truth, and the live
port changes in a shared dict through a loopback control listener. No reload, nothing
closed. Only a change of the file's shape (template, hosts, listen...) needs a reload.

nginx counts requests in flight per port in the same dict, so draining waits for exactly
the requests routed to the old slot, not for idle pooled connections. It also counts every
request per port when it ends (answers by status class, upstream errors, a latency
histogram): the watch window and the measured switch read them. And the same dict holds
what needs no reload either: a canary's share of users, a preview route to a ready slot,
maintenance mode.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from bluegreen import interrupts
from bluegreen.config import other_slot
from bluegreen.errors import BluegreenError
from bluegreen.render import control_host, is_lua_config, parse_marker
from bluegreen.routers.base import Applied, Routed, SlotCounters, cohort_in, quantile
from bluegreen.routers.nginx import NginxRouter


class NginxLuaRouter(NginxRouter):
    kind = "lua"
    features = frozenset({"counters", "weights", "preview", "maintenance"})

    def control(self, path: str, method: str = "GET") -> dict[str, Any]:
        """Talk to the lua control listener on the traffic host's loopback."""
        port = self.cfg.nginx.control
        try:
            # by name: apps that share a control port each have their own server block
            reply = self.host.http_get(port, path, timeout=2.0, method=method,
                                       host_header=control_host(self.cfg))
            if reply.status != 200:
                raise ValueError(f"HTTP {reply.status}: {reply.body[:200]!r}")
            return json.loads(reply.body)  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise BluegreenError(
                f"nginx control endpoint 127.0.0.1:{port}{path} failed: {exc}",
                host=self.label, phase="switch",
                hint="is the lua module loaded and the rendered file included by nginx.conf?"
            ) from exc

    def zone(self) -> dict[str, Any]:
        return self.control("/bluegreen/status")

    def set_live_port(self, port: int, weight: int = 0) -> None:
        """`port` is live for every new request from now on; `weight` percent of users (by
        cohort) go to the other port, a canary (0: nobody)."""
        path = f"/bluegreen/live?port={port}" + (f"&weight={weight}" if weight else "")
        with interrupts.step():  # a flip is never cut off half-way by a signal
            status = self.control(path, method="POST")
        # (a dry run's planned POST answers {}: nothing to compare; verify would catch a
        # real endpoint that answers without `live`)
        if status.get("live", port) != port or status.get("weight", weight) != weight:
            raise BluegreenError(f"nginx control endpoint answered live={status.get('live')} "
                                 f"weight={status.get('weight')}, expected {port} and "
                                 f"{weight}", host=self.label, phase="switch")

    def install(self, text: str) -> Applied:
        applied = super().install(text)
        marker = parse_marker(text)
        applied.weight = marker.weight if marker else 0  # what `apply` sets in the zone
        return applied

    def generation_floor(self) -> int:
        try:
            return int(self.zone().get("gen", 0))
        except BluegreenError:
            return 0  # no lua config there yet

    def apply(self, applied: Applied, slot: str, shape: str) -> None:
        """Same shape: flip the live port, no reload. Otherwise reload."""
        before = parse_marker(applied.previous)
        if before is not None and before.shape == shape:
            applied.flipped = True  # before the call: a lost reply may still have applied it
            self.set_live_port(self.cfg.port_of(slot), applied.weight)
            return
        applied.reloaded = True
        self.reload()

    def recovery_applied(self, previous: str | None) -> Applied:
        """A dead run's change of the same shape only flipped the live port: flipping it
        back is enough, and a reload would close idle keep-alive clients."""
        before, now = parse_marker(previous), parse_marker(self.installed())
        same_shape = before is not None and now is not None and before.shape == now.shape
        return Applied(previous, reloaded=not same_shape, flipped=True)

    def restore(self, applied: Applied) -> None:
        self.put_back(applied)
        before = parse_marker(applied.previous)
        if before is not None and is_lua_config(applied.previous) and (applied.reloaded
                                                                        or applied.flipped):
            # The zone keeps the newest generation, so after reloading the older file it
            # would still route to the new port: set the old port (and share) explicitly.
            self.set_live_port(before.port, before.weight)

    def routed(self) -> Routed:
        """In lua mode the zone, not the file, decides; the two differ only after a switch
        was cut off half-way, which is exactly what the consistency check must notice."""
        text = self.installed()
        marker = parse_marker(text)
        if marker is None:
            return Routed("", "", "no bluegreen config installed")
        if not is_lua_config(text):
            return Routed(marker.slot, marker.slot, "from the installed file (not lua yet)")
        try:
            zone = self.zone()
            live = int(zone.get("live", 0))
        except BluegreenError:
            return Routed(marker.slot, marker.slot, "nginx has not loaded the lua file yet",
                          marker.weight, marker.weight)
        ports = {self.cfg.slots.blue: "blue", self.cfg.slots.green: "green"}
        return Routed(ports.get(live, f"port {live}"), marker.slot, "from nginx's shared dict",
                      int(zone.get("weight", 0) or 0), marker.weight,
                      preview=ports.get(int(zone.get("preview", 0) or 0), ""),
                      maintenance=bool(zone["maintenance"]) if "maintenance" in zone else None)

    def inflight(self, port: int) -> int | None:
        if parse_marker(self.installed()) is None:
            return None  # the first deploy, or a move from reload mode
        try:
            return int(self.zone().get("inflight", {}).get(str(port), 0))
        except BluegreenError:
            return None

    def route_now(self, slot: str) -> bool:
        """One POST to the zone, no canary: users are off a bad release within a round
        trip, instead of after `nginx -t` (~0.1 s) and the file install."""
        self.set_live_port(self.cfg.port_of(slot), 0)
        return True

    # ---------------------------------------------------------------- a canary
    def verify(self, applied: Applied, slot: str) -> float:
        """With a canary, both sides must answer through the front door: the live slot to
        a cohort outside the share, the canary to one inside it."""
        if not applied.weight:
            return super().verify(applied, slot)
        canary = other_slot(slot)
        took = 0.0
        try:
            for side, cohort in ((slot, cohort_in(applied.weight, canary=False)),
                                 (canary, cohort_in(applied.weight, canary=True))):
                self.probe_headers = {"Cookie": f"{self.cfg.canary.cookie}={cohort}"}
                took += self.wait_front_door(side)
        finally:
            self.probe_headers = None
        self.check_error_log(applied.log_offset)
        return took

    def counters(self) -> dict[str, SlotCounters] | None:
        """Per slot, since nginx started (a reload keeps them): from the zone."""
        try:  # (no lua config loaded: the control listener does not answer)
            counted = self.zone().get("counters")
        except BluegreenError:
            return None  # the lua file is not loaded yet (the first deploy)
        if not isinstance(counted, dict):
            return None  # a file rendered before bluegreen counted: the next reload counts
        return {slot: parse_counters(counted.get(str(self.cfg.port_of(slot))) or {})
                for slot in ("blue", "green")}

    # ---------------------------------------------------------------- preview, maintenance
    def set_preview(self, slot: str | None, digest: str = "") -> None:
        port = self.cfg.port_of(slot) if slot else 0
        query = f"port={port}" + (f"&digest={digest}" if slot else "")
        with interrupts.step():
            self.control(f"/bluegreen/preview?{query}", method="POST")

    def set_maintenance(self, message: str | None, retry_after: int = 60) -> None:
        if message is None:
            query = "on=0"
        else:
            query = (f"on=1&retry={int(retry_after)}&message="
                     + urllib.parse.quote(message, safe=""))
        with interrupts.step():
            self.control(f"/bluegreen/maintenance?{query}", method="POST")

    def maintenance(self) -> bool | None:
        try:
            on = self.zone().get("maintenance")
        except BluegreenError:
            return None
        return bool(on) if on is not None else None


def parse_counters(raw: Mapping[str, Any]) -> SlotCounters:
    """One port's counters as /bluegreen/status reports them (the histogram has one bucket
    more than bounds: the requests slower than the last)."""
    bounds = [float(b) for b in raw.get("latency_le_ms") or []]
    counts = [int(n) for n in raw.get("latency") or []]
    latency = tuple(zip(bounds, counts, strict=False))
    slower = sum(counts[len(bounds):])
    return SlotCounters(
        requests=int(raw.get("requests", 0)),
        responses={k: int(v) for k, v in (raw.get("responses") or {}).items()},
        upstream_errors=int(raw.get("upstream_errors", 0)),
        p99_ms=quantile(latency, slower, 0.99),
        latency_ms=latency, latency_slower=slower)
