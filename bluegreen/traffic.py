"""The switch: render the nginx config, test it, install it atomically, apply, verify.

Safe order (FIELD-NOTES): install the rendered file with the old one kept in memory,
`nginx -t` the whole config, apply it, then prove through the front door that the new slot
answers, and scan the error log. Any failure puts the previous file back (and re-applies
it) on every traffic host: either all of them serve the new slot, or none does.

Two ways to apply, behind the same `switch()`:
- reload mode: `nginx -s reload`, then wait until the previous worker generation stopped
  accepting. Works on any nginx; but on nginx < 1.27.4 a reload closes idle client
  keep-alive connections at once, so a client may see a reset (README, "Switch modes").
- lua mode: the rendered file stays the persistent truth, and the live port changes in a
  shared dict through a loopback control endpoint: no reload, nothing closed. Only a change
  of the file's shape (template, hosts, listen...) needs a reload, and gets one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from bluegreen import commands
from bluegreen.config import Config, HostSpec, other_slot
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.hosts import Host

SLOT_HEADER = "X-Bluegreen-Slot"
MARKER_RE = re.compile(r"bluegreen-live: slot=(?P<slot>\w+) port=(?P<port>\d+)"
                       r"(?: release=(?P<release>\S*))?(?: shape=(?P<shape>\w*))?")
TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATES = {"reload": TEMPLATES / "nginx.conf.j2", "lua": TEMPLATES / "nginx-lua.conf.j2"}


# ---------------------------------------------------------------- pure parts


def upstream_address(spec: HostSpec) -> str:
    if spec.upstream:
        return spec.upstream
    return "127.0.0.1" if spec.is_local else spec.address


def template_context(cfg: Config, live_slot: str, release: str, version: str,
                     generation: int = 0, shape: str = "") -> dict[str, Any]:
    live_port = cfg.port_of(live_slot)
    return {
        "app": cfg.app,
        "live_slot": live_slot,
        "live_port": live_port,
        "idle_slot": other_slot(live_slot),
        "idle_port": cfg.port_of(other_slot(live_slot)),
        "slots": {"blue": cfg.slots.blue, "green": cfg.slots.green},
        "servers": [f"{_bracket(upstream_address(h))}:{live_port}" for h in cfg.hosts.app],
        "app_hosts": [upstream_address(h) for h in cfg.hosts.app],
        "listen": cfg.nginx.listen,
        "server_name": cfg.nginx.server_name,
        "control_port": cfg.nginx.control_port,
        "release": release,
        "version": version,
        # grows with every rendering: in lua mode a reload of an older file never wins
        "generation": generation,
        "marker": (f"bluegreen-live: slot={live_slot} port={live_port} release={release}"
                   + (f" shape={shape}" if shape else "")),
    }


def template_path(cfg: Config) -> Path:
    return cfg.resolve(cfg.nginx.template) if cfg.nginx.template else \
        DEFAULT_TEMPLATES[cfg.nginx.mode]


def _render_raw(cfg: Config, ctx: dict[str, Any]) -> str:
    path = template_path(cfg)
    try:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 autoescape=False)  # noqa: S701 - nginx config, not HTML
        return env.get_template(path.name).render(**ctx)
    except jinja2.TemplateSyntaxError as exc:
        raise BluegreenError(f"nginx template {exc.filename or path}:{exc.lineno}: {exc.message}",
                             phase="render", hint="fix the template; traffic was not touched"
                             ) from exc
    except jinja2.TemplateNotFound as exc:
        raise BluegreenError(f"nginx template {path} not found", phase="render",
                             hint="check nginx.template (relative to the config file)") from exc
    except jinja2.UndefinedError as exc:
        raise BluegreenError(f"nginx template {path}: {exc}", phase="render",
                             hint="the template may use: " + ", ".join(sorted(ctx))) from exc


def render(cfg: Config, live_slot: str, release: str, version: str,
           generation: int | None = None) -> str:
    """Render the template; a template error names the file and line, before any host is
    touched. The marker records the file's shape: a hash of everything but the live slot,
    so lua mode can tell a plain switch (no reload) from a real config change."""
    shape = hashlib.sha256(_render_raw(cfg, template_context(
        cfg, "blue", "", "", 0)).encode()).hexdigest()[:12]
    gen = int(time.time() * 1000) if generation is None else generation
    text = _render_raw(cfg, template_context(cfg, live_slot, release, version, gen, shape))
    if not MARKER_RE.search(text):
        raise BluegreenError(f"nginx template {template_path(cfg)} does not render the marker "
                             "line (`# {{ marker }}`)", phase="render",
                             hint="add `# {{ marker }}`: status and safety checks read it")
    return text


@dataclass(frozen=True)
class Marker:
    slot: str
    port: int
    release: str
    shape: str


def parse_marker(text: str | None) -> Marker | None:
    """What an installed config routes to, or None when there is no bluegreen config."""
    if not text:
        return None
    m = MARKER_RE.search(text)
    return Marker(m["slot"], int(m["port"]), m["release"] or "", m["shape"] or "") if m else None


def front_door(listen: str) -> tuple[str, int]:
    """Where to knock on the traffic host itself, from the `listen` value."""
    first = listen.split()[0]
    addr, sep, port = first.rpartition(":")
    if not sep:
        return "127.0.0.1", int(first)
    addr = addr.strip("[]")
    if addr in ("", "*", "0.0.0.0", "::"):
        addr = "127.0.0.1"
    return addr, int(port)


def _bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


# ---------------------------------------------------------------- the switch


@dataclass
class Installed:
    host: Host
    previous: str | None  # None: there was no file before us
    log_offset: int = 0  # error log size before we applied: we scan only what follows
    reloaded: bool = False  # how it was applied decides how it is undone
    switched_live: bool = False


@dataclass
class Step:
    installed: Installed | None = None
    error: BluegreenError | None = None


def switch(cfg: Config, hosts: list[Host], slot: str, release: str, version: str) -> None:
    """Point every traffic host at `slot`. All or nothing; raises BluegreenError.

    Every host must pass `nginx -t` before any of them applies. With one host in reload
    mode, test and reload are one round trip.
    """
    text = render(cfg, slot, release, version, generation=_next_generation(cfg, hosts))
    shape = parse_marker(text).shape  # type: ignore[union-attr]
    one_step = len(hosts) == 1 and cfg.nginx.mode == "reload"
    installed: list[Installed] = []
    try:
        results = _parallel(hosts, lambda h: _install_and_test(cfg, h, text, reload=one_step))
        installed = [r.installed for r in results if r.installed is not None]
        _raise_first([r.error for r in results])
        if not one_step:
            _raise_first(_parallel(installed, lambda i: _apply(cfg, i, slot, shape)))
        _raise_first(_parallel(installed, lambda i: _verify_applied(cfg, i, slot)))
    except BaseException as exc:
        restored = _restore_all(cfg, installed)
        if isinstance(exc, BluegreenError):
            exc.hint = (exc.hint + "; " if exc.hint else "") + restored
        raise


def _next_generation(cfg: Config, hosts: list[Host]) -> int:
    """Newer than anything a lua zone has seen: a deployer whose clock is behind must still
    win when a reload installs its file (the zone keeps the highest generation)."""
    now = int(time.time() * 1000)
    if cfg.nginx.mode != "lua":
        return now
    seen = [now - 1]
    for h in hosts:
        try:
            seen.append(int(control(cfg, h, "/bluegreen/status").get("gen", 0)))
        except BluegreenError:
            pass  # no lua config there yet
    return max(now, max(seen) + 1)


def _parallel(items: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _raise_first(errors: list[BluegreenError | None]) -> None:
    for e in errors:
        if e is not None:
            raise e


def _install_and_test(cfg: Config, host: Host, text: str, *, reload: bool) -> Step:
    host.phase = "switch"
    target = cfg.nginx_target
    try:
        previous = host.read(target)
        offset = host.size(cfg.nginx.error_log) if cfg.nginx.error_log else 0
        host.write_atomic(target, text)
    except BluegreenError as exc:
        return Step(error=exc)
    # From here on the host holds our file: every way out must be able to undo it.
    inst = Installed(host, previous, offset, reloaded=reload)
    script = commands.nginx_test(cfg.nginx.command)
    if reload:
        script = f"{script} || exit 10; " + _reload_script(cfg)
    try:
        result = host.run(script, timeout=cfg.nginx.verify_timeout + 30, check=False)
    except BluegreenError as exc:  # a timeout or a dropped link, after the file was written
        return Step(inst, exc)
    if result.rc == 10 or (not reload and not result.ok):
        _restore_one(cfg, Installed(host, previous))
        return Step(error=BluegreenError(
            "nginx -t rejected the rendered config:\n    "
            + "\n    ".join(result.stdout.strip().splitlines()[-6:]),
            host=host.label, phase="switch",
            hint=f"the previous {target} is back and nginx was not reloaded; fix "
                 f"{template_path(cfg)} and re-run"))
    if not result.ok:
        return Step(inst, _reload_error(host, result))
    return Step(inst)


def _apply(cfg: Config, inst: Installed, slot: str, shape: str) -> BluegreenError | None:
    """Lua mode with an unchanged shape: flip the live port, no reload. Otherwise reload."""
    before = parse_marker(inst.previous)
    if cfg.nginx.mode == "lua" and before is not None and before.shape == shape:
        inst.switched_live = True  # before the call: a lost reply may still have applied it
        try:
            set_live_port(cfg, inst.host, cfg.port_of(slot))
            return None
        except BluegreenError as exc:
            return exc
    inst.reloaded = True
    try:
        result = _reload(cfg, inst.host)
    except BluegreenError as exc:
        return exc
    return None if result.ok else _reload_error(inst.host, result)


def _reload_script(cfg: Config) -> str:
    return commands.nginx_reload_and_wait(cfg.nginx.command, cfg.nginx.pid_file,
                                          cfg.nginx.verify_timeout)


def _reload(cfg: Config, host: Host) -> Any:
    return host.run(_reload_script(cfg), timeout=cfg.nginx.verify_timeout + 30, check=False)


def control(cfg: Config, host: Host, path: str, method: str = "GET") -> dict[str, Any]:
    """Talk to the lua control listener on the traffic host's loopback."""
    try:
        reply = host.http_get(cfg.nginx.control_port, path, timeout=2.0, method=method)
        if reply.status != 200:
            raise ValueError(f"HTTP {reply.status}: {reply.body[:200]!r}")
        return json.loads(reply.body)  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise BluegreenError(
            f"nginx control endpoint 127.0.0.1:{cfg.nginx.control_port}{path} failed: {exc}",
            host=host.label, phase="switch",
            hint="is the lua module loaded and the rendered file included by nginx.conf?"
        ) from exc


def set_live_port(cfg: Config, host: Host, port: int) -> None:
    status = control(cfg, host, f"/bluegreen/live?port={port}", method="POST")
    if status.get("live") != port:
        raise BluegreenError(f"nginx control endpoint answered live={status.get('live')}, "
                             f"expected {port}", host=host.label, phase="switch")


def _reload_error(host: Host, result: Any) -> BluegreenError:
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    return BluegreenError("nginx reload did not take: " + " / ".join(detail), host=host.label,
                          phase="switch", hint="check the nginx error log and nginx.pid_file")


def _verify_applied(cfg: Config, inst: Installed, slot: str) -> BluegreenError | None:
    try:
        verify(cfg, inst.host, slot)
        _check_error_log(cfg, inst.host, inst.log_offset)
    except BluegreenError as exc:
        return exc
    return None


def verify(cfg: Config, host: Host, slot: str) -> float:
    """Wait until the front door answers from `slot` with a healthy status; return seconds."""
    addr, port = front_door(cfg.nginx.listen)
    start = time.monotonic()
    deadline = start + cfg.nginx.verify_timeout
    last = "no answer yet"
    server_name = cfg.nginx.server_name if cfg.nginx.server_name not in ("_", "") else "localhost"
    while time.monotonic() < deadline:
        try:
            reply = host.http_get(port, cfg.verify_path, timeout=2.0, address=addr,
                                  host_header=server_name.split()[0])
            answered = reply.header(SLOT_HEADER)
            if reply.status == cfg.health.status and answered == slot:
                return time.monotonic() - start
            last = f"HTTP {reply.status} from slot {answered or '(no X-Bluegreen-Slot header)'}"
        except (OSError, ValueError, EOFError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.01)
    raise BluegreenError(
        f"after the switch, {addr}:{port}{cfg.verify_path} did not answer from slot {slot} "
        f"within {cfg.nginx.verify_timeout:g}s (last: {last})", host=host.label, phase="verify",
        hint="check the nginx error log; the template must keep the X-Bluegreen-Slot header")


def _check_error_log(cfg: Config, host: Host, offset: int) -> None:
    """A master can reject a config that passed -t (a busy listen port): only the log says so."""
    if not cfg.nginx.error_log:
        return
    new = host.read(cfg.nginx.error_log, offset=offset, limit=256 * 1024) or ""
    bad = [line for line in new.splitlines() if "[emerg]" in line or "[alert]" in line]
    if bad:
        raise BluegreenError("nginx logged errors while applying the new config:\n    "
                             + "\n    ".join(bad[-5:]), host=host.label, phase="verify",
                             hint=f"see {cfg.nginx.error_log}")


def _restore_one(cfg: Config, inst: Installed) -> None:
    host, target = inst.host, cfg.nginx_target
    if inst.previous is None:
        host.remove(target)
    else:
        host.write_atomic(target, inst.previous)
    if inst.reloaded:
        _reload(cfg, host)
    before = parse_marker(inst.previous)
    if before is not None and is_lua_config(inst.previous) and (inst.reloaded
                                                                or inst.switched_live):
        # The zone keeps the newest generation, so after reloading the older file it would
        # still route to the new port: set the old port explicitly.
        set_live_port(cfg, host, before.port)


def is_lua_config(text: str | None) -> bool:
    return bool(text) and "/bluegreen/live" in text  # type: ignore[operator]


def routed_slot(cfg: Config, host: Host) -> tuple[str, str]:
    """(slot nginx really routes to, the installed file's slot) on one traffic host.

    In lua mode the zone, not the file, decides; the two can only differ after a switch
    was cut off halfway, which is exactly what the consistency check must notice.
    """
    text = host.read(cfg.nginx_target)
    marker = parse_marker(text)
    if marker is None:
        return "", ""
    if not is_lua_config(text):
        return marker.slot, marker.slot
    try:
        live = int(control(cfg, host, "/bluegreen/status").get("live", 0))
    except BluegreenError:
        return marker.slot, marker.slot  # nginx has not loaded the lua file yet
    ports = {cfg.slots.blue: "blue", cfg.slots.green: "green"}
    return ports.get(live, f"port {live}"), marker.slot


def _restore_all(cfg: Config, installed: list[Installed]) -> str:
    """Put back what every host had; report, never raise over the original error."""
    problems = []
    for inst in installed:
        try:
            _restore_one(cfg, inst)
        except (BluegreenError, CommandFailed, OSError) as exc:
            problems.append(f"{inst.host.label}: {exc}")
    if not installed:
        return "traffic was not touched"
    if problems:
        return ("the previous nginx config could NOT be restored on: " + "; ".join(problems)
                + " - fix nginx there by hand NOW")
    return "the previous nginx config was restored on " + ", ".join(
        i.host.label for i in installed)


# ---------------------------------------------------------------- draining


def inflight(cfg: Config, host: Host, port: int) -> int:
    status = control(cfg, host, "/bluegreen/status")
    return int(status.get("inflight", {}).get(str(port), 0))


def drain(cfg: Config, hosts: list[Host], port: int, timeout: float) -> dict[str, int] | None:
    """Lua mode: wait until no traffic host has a request in flight to `port`.

    Zero must hold on two polls 50 ms apart: a request counted in the access phase a
    moment after the first poll is still caught. Returns what was left per host when the
    timeout expired (empty when drained). Returns None when a host does not run the lua
    config yet (the first deploy, or a move from reload mode): then the caller drains by
    connection count on the app hosts, as in reload mode.
    """
    installed = _parallel(hosts, lambda h: parse_marker(h.read(cfg.nginx_target)))
    if any(m is None for m in installed):
        return None
    try:
        _parallel(hosts, lambda h: inflight(cfg, h, port))
    except BluegreenError:
        return None

    def one(h: Host) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        zeros = 0
        while True:
            n = inflight(cfg, h, port)
            zeros = zeros + 1 if n == 0 else 0
            if zeros >= 2:
                return h.label, 0
            if time.monotonic() >= deadline:
                return h.label, n
            time.sleep(0.05 if n == 0 else 0.02)
    return {label: n for label, n in _parallel(hosts, one) if n}
