"""nginx with the lua module: the rendered file stays the persistent truth, and the live
port changes in a shared dict through a loopback control listener. No reload, nothing
closed. Only a change of the file's shape (template, hosts, listen...) needs a reload.

nginx counts requests in flight per port in the same dict, so draining waits for exactly
the requests routed to the old slot, not for idle pooled connections.
"""

from __future__ import annotations

import json
from typing import Any

from bluegreen import interrupts
from bluegreen.errors import BluegreenError
from bluegreen.render import control_host, is_lua_config, parse_marker
from bluegreen.routers.base import Applied, Routed
from bluegreen.routers.nginx import NginxRouter


class NginxLuaRouter(NginxRouter):
    kind = "lua"

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

    def set_live_port(self, port: int) -> None:
        with interrupts.step():  # a flip is never cut off half-way by a signal
            status = self.control(f"/bluegreen/live?port={port}", method="POST")
        # (a dry run's planned POST answers {}: nothing to compare; verify would catch a
        # real endpoint that answers without `live`)
        if status.get("live", port) != port:
            raise BluegreenError(f"nginx control endpoint answered live={status.get('live')}, "
                                 f"expected {port}", host=self.label, phase="switch")

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
            self.set_live_port(self.cfg.port_of(slot))
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
            # would still route to the new port: set the old port explicitly.
            self.set_live_port(before.port)

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
            live = int(self.zone().get("live", 0))
        except BluegreenError:
            return Routed(marker.slot, marker.slot, "nginx has not loaded the lua file yet")
        ports = {self.cfg.slots.blue: "blue", self.cfg.slots.green: "green"}
        return Routed(ports.get(live, f"port {live}"), marker.slot, "from nginx's shared dict")

    def inflight(self, port: int) -> int | None:
        if parse_marker(self.installed()) is None:
            return None  # the first deploy, or a move from reload mode
        try:
            return int(self.zone().get("inflight", {}).get(str(port), 0))
        except BluegreenError:
            return None
