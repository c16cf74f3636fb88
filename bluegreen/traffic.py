"""The switch: render the nginx config, test it, install it atomically, reload, verify.

Safe order (FIELD-NOTES): install the rendered file with the old one kept in memory,
`nginx -t` the whole config, reload, then prove through the front door that the new slot
answers (reload is asynchronous and a master can reject a config that passed -t), and scan
the error log. Any failure puts the previous file back and reloads, on every traffic host:
either all of them serve the new slot, or none does.
"""

from __future__ import annotations

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
                       r"(?: release=(?P<release>\S*))?")
DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "nginx.conf.j2"


# ---------------------------------------------------------------- pure parts


def upstream_address(spec: HostSpec) -> str:
    if spec.upstream:
        return spec.upstream
    return "127.0.0.1" if spec.is_local else spec.address


def template_context(cfg: Config, live_slot: str, release: str, version: str) -> dict[str, Any]:
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
        "marker": f"bluegreen-live: slot={live_slot} port={live_port} release={release}",
    }


def template_path(cfg: Config) -> Path:
    return cfg.resolve(cfg.nginx.template) if cfg.nginx.template else DEFAULT_TEMPLATE


def render(cfg: Config, live_slot: str, release: str, version: str) -> str:
    """Render the template; a template error names the file and line, before any host is touched."""
    path = template_path(cfg)
    try:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 autoescape=False)  # noqa: S701 - nginx config, not HTML
        text = env.get_template(path.name).render(
            **template_context(cfg, live_slot, release, version))
    except jinja2.TemplateSyntaxError as exc:
        raise BluegreenError(f"nginx template {exc.filename or path}:{exc.lineno}: {exc.message}",
                             phase="render", hint="fix the template; traffic was not touched"
                             ) from exc
    except jinja2.TemplateNotFound as exc:
        raise BluegreenError(f"nginx template {path} not found", phase="render",
                             hint="check nginx.template (relative to the config file)") from exc
    except jinja2.UndefinedError as exc:
        raise BluegreenError(f"nginx template {path}: {exc}", phase="render",
                             hint="the template may use: " + ", ".join(
                                 sorted(template_context(cfg, live_slot, "", "")))) from exc
    if not MARKER_RE.search(text):
        raise BluegreenError(f"nginx template {path} does not render the marker line "
                             "(`# {{ marker }}`)", phase="render",
                             hint="add `# {{ marker }}`: status and safety checks read it")
    return text


def parse_marker(text: str | None) -> tuple[str, int, str] | None:
    """(slot, port, release) from an installed config, or None when there is none."""
    if not text:
        return None
    m = MARKER_RE.search(text)
    return (m["slot"], int(m["port"]), m["release"] or "") if m else None


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
    log_offset: int = 0  # error log size before our reload: we scan only what follows


def switch(cfg: Config, hosts: list[Host], slot: str, release: str, version: str) -> None:
    """Point every traffic host at `slot`. All or nothing; raises BluegreenError.

    With one traffic host, test and reload are one round trip. With several, every host
    must pass `nginx -t` before any of them reloads.
    """
    text = render(cfg, slot, release, version)
    one_step = len(hosts) == 1
    installed: list[Installed] = []
    try:
        results = _parallel(hosts, lambda h: _install_and_test(cfg, h, text, reload=one_step))
        installed = [r.installed for r in results if r.installed is not None]
        _raise_first([r.error for r in results])
        if not one_step:
            _raise_first(_parallel(installed, lambda i: _reload(cfg, i)))
        _raise_first(_parallel(installed, lambda i: _verify_applied(cfg, i, slot)))
    except BaseException as exc:
        restored = _restore_all(cfg, installed)
        if isinstance(exc, BluegreenError):
            exc.hint = (exc.hint + "; " if exc.hint else "") + restored
        raise


@dataclass
class Step:
    installed: Installed | None = None
    error: BluegreenError | None = None


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
    inst = Installed(host, previous, offset)
    script = commands.nginx_test(cfg.nginx.command)
    if reload:
        script = (f"{script} || exit 10; "
                  + commands.nginx_reload_and_wait(cfg.nginx.command, cfg.nginx.pid_file,
                                                   cfg.nginx.verify_timeout))
    result = host.run(script, timeout=cfg.nginx.verify_timeout + 30, check=False)
    if result.rc == 10 or (not reload and not result.ok):
        _restore_one(cfg, inst, reload=False)
        return Step(error=BluegreenError(
            "nginx -t rejected the rendered config:\n    "
            + "\n    ".join(result.stdout.strip().splitlines()[-6:]),
            host=host.label, phase="switch",
            hint=f"the previous {target} is back and nginx was not reloaded; fix "
                 f"{template_path(cfg)} and re-run"))
    if not result.ok:
        return Step(inst, _reload_error(host, result))
    return Step(inst)


def _reload(cfg: Config, inst: Installed) -> BluegreenError | None:
    result = inst.host.run(commands.nginx_reload_and_wait(
        cfg.nginx.command, cfg.nginx.pid_file, cfg.nginx.verify_timeout),
        timeout=cfg.nginx.verify_timeout + 30, check=False)
    return None if result.ok else _reload_error(inst.host, result)


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
        f"after the reload, {addr}:{port}{cfg.verify_path} did not answer from slot {slot} "
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


def _restore_one(cfg: Config, inst: Installed, *, reload: bool) -> None:
    host, target = inst.host, cfg.nginx_target
    if inst.previous is None:
        host.remove(target)
    else:
        host.write_atomic(target, inst.previous)
    if reload:
        host.run(commands.nginx_reload(cfg.nginx.command), timeout=30, check=False)


def _restore_all(cfg: Config, installed: list[Installed]) -> str:
    """Put back what every host had; report, never raise over the original error."""
    problems = []
    for inst in installed:
        try:
            _restore_one(cfg, inst, reload=True)
        except (BluegreenError, CommandFailed, OSError) as exc:
            problems.append(f"{inst.host.label}: {exc}")
    if not installed:
        return "traffic was not touched"
    if problems:
        return ("the previous nginx config could NOT be restored on: " + "; ".join(problems)
                + " - fix nginx there by hand NOW")
    return "the previous nginx config was restored and reloaded on " + ", ".join(
        i.host.label for i in installed)
