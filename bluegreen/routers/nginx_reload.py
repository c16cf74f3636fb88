"""nginx, switched by re-rendering the file and reloading: works on any nginx.

On nginx < 1.27.4 a reload closes idle client keep-alive connections at once, so a client
may see a reset (README, "Switch modes"). Cannot count in-flight requests: draining is by
established connections on the app hosts.
"""

from __future__ import annotations

from bluegreen.render import parse_marker
from bluegreen.routers.base import Applied, Routed
from bluegreen.routers.nginx import NginxRouter


class NginxReloadRouter(NginxRouter):
    kind = "reload"
    tests_and_applies_at_once = True

    def apply(self, applied: Applied, slot: str, shape: str) -> None:
        applied.reloaded = True  # before the call: a lost reply may still have applied it
        self.reload()

    def restore(self, applied: Applied) -> None:
        self.put_back(applied)

    def routed(self) -> Routed:
        """The file says what nginx should route to; only a request through the front door
        says what it does (a run killed between writing the file and the reload leaves
        them apart)."""
        marker = parse_marker(self.installed())
        if marker is None:
            return Routed("", "", "no bluegreen config installed")
        answered, what = self.probe_front_door()
        if answered in ("blue", "green"):
            return Routed(answered, marker.slot, "answered through the front door")
        return Routed(marker.slot, marker.slot, f"from the installed file (front door: {what})")
