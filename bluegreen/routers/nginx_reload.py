"""nginx, switched by re-rendering the file and reloading: works on any nginx.

On nginx < 1.27.4 a reload closes idle client keep-alive connections at once, so a client
may see a reset (README, "Switch modes"). Cannot count in-flight requests: draining is by
established connections on the app hosts.
"""

from __future__ import annotations

from bluegreen.errors import BluegreenError
from bluegreen.render import maintenance_file, parse_marker, template_context
from bluegreen.routers.base import Applied, ConfigRejected, Routed
from bluegreen.routers.nginx import TEST_REJECTED, NginxRouter, nginx_test, test_rejection


def maintenance_snippet(message: str, retry_after: int) -> str:
    """What the location includes while maintenance is on. nginx reads `$` in a string as
    the start of a variable and has no escape for it, so a message with `$` is refused
    (by the caller, before anything is written)."""
    if "$" in message:
        raise ValueError("contains '$', which nginx reads as a variable in reload mode")
    text = message.replace("\\", "\\\\").replace('"', '\\"')
    return ("# Written by `fab maintenance on` (bluegreen); `fab maintenance off` removes it.\n"
            f"add_header Retry-After {int(retry_after)} always;\n"
            "add_header Cache-Control no-store always;\n"
            'default_type "text/plain; charset=utf-8";\n'
            f'return 503 "{text}\\n";\n')


class NginxReloadRouter(NginxRouter):
    kind = "reload"
    tests_and_applies_at_once = True
    features = frozenset({"maintenance"})

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

    # ---------------------------------------------------------------- maintenance
    def set_maintenance(self, message: str | None, retry_after: int = 60) -> None:
        """Write (or remove) the snippet every location of ours includes, test, reload; a
        rejected config puts the previous snippet back."""
        path = maintenance_file(self.cfg)
        previous = self.host.read(path)
        if message is None and previous is None:
            return
        if message is not None:
            self._check_includes_maintenance()
            try:
                text = maintenance_snippet(message, retry_after)
            except ValueError as exc:
                raise BluegreenError(f"the maintenance message {exc}", host=self.label,
                                     phase="maintenance",
                                     hint="leave the $ out (lua mode shows any text)") from exc
            self.host.write_atomic(path, text)
        else:
            self.host.remove(path)
        script = (f"{nginx_test(self.cfg.nginx.command)} || exit {TEST_REJECTED}; "
                  + self._reload_script())
        result = self.host.run(script, timeout=self.cfg.nginx.verify_timeout + 30,
                               check=False, says="test nginx -t, then reload nginx "
                                                 f"(maintenance {'on' if message else 'off'})")
        if result.ok:
            return
        if previous is None:
            self.host.remove(path)
        else:
            self.host.write_atomic(path, previous)
        if result.rc == TEST_REJECTED:
            raise ConfigRejected("nginx -t rejected the maintenance page:\n    "
                                 + test_rejection(result), host=self.label,
                                 phase="maintenance", hint=f"{path} was put back as it was")
        self.host.run(self._reload_script(), timeout=self.cfg.nginx.verify_timeout + 30,
                      check=False, says="reload nginx with the previous maintenance page")
        raise BluegreenError(f"nginx reload did not take: {result.stderr.strip()[-300:]}",
                             host=self.label, phase="maintenance",
                             hint=f"{path} was put back as it was; check the nginx error log")

    def _check_includes_maintenance(self) -> None:
        """A file rendered before maintenance mode existed never includes the snippet."""
        include = template_context(self.cfg, "blue", "", "")["maintenance_include"]
        where = self.cfg.nginx_snippets.get("location", self.target)
        text = self.host.read(where) or ""
        if include not in text:
            raise BluegreenError(
                f"{where} on {self.label} does not include the maintenance page yet",
                host=self.label, phase="maintenance",
                hint="it was rendered by an older bluegreen or by your own template: run "
                     "`fab switch --to <the live slot>` once (it re-renders it), or add "
                     f'`include "{include}";` to the location that serves the app')

    def maintenance(self) -> bool | None:
        return self.host.exists(maintenance_file(self.cfg))
