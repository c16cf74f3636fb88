"""Start and stop one slot (a port) on one host, through a backend.

plain:      setsid + pidfile (pid and start time) + a log file per slot. No daemon needed.
supervisor: a [program:<app>-<slot>] file in supervisord's include dir, driven by supervisorctl.
systemd:    a template unit <app>@.service, instance = slot, with a per-slot EnvironmentFile.

Backends only start and stop; the flow checks port ownership (commands.drain_stop_free)
the same way for all of them, so none of them ever kills a process it did not start.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod

from bluegreen import commands
from bluegreen.commands import Layout, q
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host


def app_env(cfg: Config, slot: str, release_dir: str, version: str) -> dict[str, str]:
    """What the app sees: the user's [env] plus where and what it is."""
    port = str(cfg.port_of(slot))
    return {**cfg.env, "PORT": port, "BLUEGREEN_APP": cfg.app, "BLUEGREEN_SLOT": slot,
            "BLUEGREEN_PORT": port, "BLUEGREEN_RELEASE": release_dir,
            "BLUEGREEN_VERSION": version}


def artifact_file_name(cfg: Config, artifact_name: str) -> str:
    return cfg.artifact_name or artifact_name


def start_command(cfg: Config, slot: str, release_dir: str, version: str,
                  artifact_name: str) -> str:
    """The user's start template with every substituted value shell-quoted."""
    file_name = artifact_file_name(cfg, artifact_name)
    return cfg.start.format(
        release=q(release_dir), port=cfg.port_of(slot), slot=slot, app=cfg.app,
        artifact=q(f"{release_dir}/{file_name}"), version=q(version))


class Backend(ABC):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def layout(self, host: Host) -> Layout:
        return Layout(host.root)

    @abstractmethod
    def start(self, host: Host, slot: str, release_dir: str, version: str,
              artifact_name: str) -> None: ...

    @abstractmethod
    def stop_script(self, host: Host, slot: str) -> str:
        """Shell that stops the slot if we run something there; its output ends with one of
        none | gone | stopped | killed. The flow runs it together with drain and port check."""

    @abstractmethod
    def running(self, host: Host, slot: str) -> bool: ...

    def logs(self, host: Host, slot: str, lines: int = 30) -> str:
        return host.run(commands.tail_log(self.layout(host).logfile(slot), lines),
                        timeout=30, check=False, mutates=False).stdout


class PlainBackend(Backend):
    def start(self, host: Host, slot: str, release_dir: str, version: str,
              artifact_name: str) -> None:
        cmd = start_command(self.cfg, slot, release_dir, version, artifact_name)
        layout = self.layout(host)
        host.write_atomic(f"{layout.slot_dir(slot)}/env",
                          commands.env_file(app_env(self.cfg, slot, release_dir, version)),
                          mode=0o600)
        host.run(commands.link_slot_release(layout, slot, release_dir) + " && "
                 + commands.plain_start(layout, slot, release_dir, cmd), timeout=30,
                 hint="check the start command and that the release unpacked")

    def stop_script(self, host: Host, slot: str) -> str:
        return commands.plain_stop(self.layout(host), slot, self.cfg.process.stop_timeout)

    def running(self, host: Host, slot: str) -> bool:
        """Read the pidfile and /proc over the file channel: no command round trip."""
        recorded = host.read(self.layout(host).pidfile(slot))
        pid = recorded.split()[0] if recorded and recorded.split() else ""
        if not pid.isdigit():
            return False
        return pid_is_ours(recorded or "", host.read(f"/proc/{pid}/stat") or "")


def pid_is_ours(pidfile_text: str, proc_stat: str) -> bool:
    """The pidfile says "PID STARTTIME"; the process must be alive with that start time.

    A recycled pid has another start time, and a zombie (state Z) is not running.
    """
    parts = pidfile_text.split()
    if len(parts) != 2 or ")" not in proc_stat:
        return False
    fields = proc_stat.rsplit(")", 1)[1].split()
    # after "pid (comm)": state is field 3 of stat, starttime field 22
    return len(fields) > 19 and fields[0] not in ("Z", "X") and fields[19] == parts[1]


class SupervisorBackend(Backend):
    def program(self, slot: str) -> str:
        return f"{self.cfg.app}-{slot}"

    def ctl(self, *args: str) -> str:
        p = self.cfg.process
        return " ".join([p.supervisorctl, "-c", q(p.supervisor_conf), *args])

    def include_dir(self, host: Host) -> str:
        return self.cfg.process.supervisor_include_dir or f"{host.root}/supervisor"

    def program_conf(self, host: Host, slot: str, release_dir: str, version: str,
                     artifact_name: str) -> str:
        cmd = start_command(self.cfg, slot, release_dir, version, artifact_name)
        env = app_env(self.cfg, slot, release_dir, version)
        # supervisor's environment= syntax: KEY="value" pairs; quotes inside are escaped, and
        # % must be doubled because supervisor expands %(name)s in config values.
        env_line = ",".join(f'{k}="{_sv_escape(v)}"' for k, v in env.items())
        return "\n".join([
            f"; managed by bluegreen: {self.cfg.app} slot {slot}",
            f"[program:{self.program(slot)}]",
            f"command=/bin/sh -c {_sv_escape_pct(shlex.quote(commands.execable(cmd)))}",
            f"directory={_sv_escape_pct(release_dir)}",
            f"environment={env_line}",
            "autostart=true",  # a rebooted host brings both slots back warm
            "autorestart=unexpected",
            "startsecs=0",  # readiness is our health check's job, not supervisor's
            "stopasgroup=true",
            "killasgroup=true",
            f"stopwaitsecs={int(self.cfg.process.stop_timeout)}",
            f"stdout_logfile={_sv_escape_pct(self.layout(host).logfile(slot))}",
            "redirect_stderr=true",
            "",
        ])

    def start(self, host: Host, slot: str, release_dir: str, version: str,
              artifact_name: str) -> None:
        path = f"{self.include_dir(host)}/{self.program(slot)}.conf"
        host.write_atomic(path, self.program_conf(host, slot, release_dir, version,
                                                  artifact_name), mode=0o600)  # holds [env]
        prog = q(self.program(slot))
        out = host.run(commands.link_slot_release(self.layout(host), slot, release_dir) + "; "
                       f"{self.ctl('reread')} >/dev/null; {self.ctl('update', prog)} 2>&1; "
                       f"{self.ctl('start', prog)} 2>&1 || true", timeout=60).stdout
        if "ERROR" in out and "already started" not in out:
            raise BluegreenError(f"supervisorctl could not start {self.program(slot)}: "
                                 f"{out.strip()}", host=host.label, phase="start",
                                 hint=f"check that {self.cfg.process.supervisor_conf} includes "
                                      f"{self.include_dir(host)}/*.conf and supervisord runs")

    def stop_script(self, host: Host, slot: str) -> str:
        # "no such process" / "not running" mean nothing of ours runs there: fine
        return (f"out=$({self.ctl('stop', q(self.program(slot)))} 2>&1); echo \"$out\"; "
                'case "$out" in *"no such process"*|*"not running"*) echo none;; '
                '*ERROR*) echo "supervisorctl stop failed: $out" >&2; exit 1;; '
                "*) echo stopped;; esac")

    def running(self, host: Host, slot: str) -> bool:
        out = host.run(f"{self.ctl('status', q(self.program(slot)))} 2>&1 || true",
                       timeout=30, mutates=False).stdout
        return "RUNNING" in out


class SystemdBackend(Backend):
    def unit_name(self, slot: str) -> str:
        return f"{self.cfg.app}@{slot}.service"

    def unit_text(self, host: Host) -> str:
        """A template unit; %i is the slot. The release comes from slots/%i/release."""
        root = host.root
        # systemd expands $VAR and %x itself: double them in the user's template first.
        template = self.cfg.start.replace("$", "$$").replace("%", "%%")
        cmd = template.format(
            release=f"{root}/slots/%i/release", port="${BLUEGREEN_PORT}", slot="%i",
            app=self.cfg.app, artifact="${BLUEGREEN_ARTIFACT}", version="${BLUEGREEN_VERSION}")
        return "\n".join([
            "# managed by bluegreen: do not edit, re-rendered on every deploy",
            "[Unit]",
            f"Description=bluegreen {self.cfg.app} slot %i",
            "After=network.target",
            "",
            "[Service]",
            "Type=simple",
            f"EnvironmentFile={root}/slots/%i/env",
            f"WorkingDirectory={root}/slots/%i/release",
            f"ExecStart=/bin/sh -c {shlex.quote(commands.execable(cmd))}",
            "KillMode=control-group",
            f"TimeoutStopSec={int(self.cfg.process.stop_timeout)}",
            "Restart=on-failure",
            f"StandardOutput=append:{root}/slots/%i/app.log",
            "StandardError=inherit",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])

    def env_file(self, slot: str, release_dir: str, version: str, artifact_name: str) -> str:
        env = app_env(self.cfg, slot, release_dir, version)
        env["BLUEGREEN_ARTIFACT"] = f"{release_dir}/{artifact_file_name(self.cfg, artifact_name)}"
        return "".join(f'{k}="{_env_escape(v)}"\n' for k, v in env.items())

    def start(self, host: Host, slot: str, release_dir: str, version: str,
              artifact_name: str) -> None:
        layout = self.layout(host)
        unit_path = f"{self.cfg.process.systemd_unit_dir}/{self.cfg.app}@.service"
        host.write_atomic(unit_path, self.unit_text(host))
        host.write_atomic(f"{layout.slot_dir(slot)}/env",
                          self.env_file(slot, release_dir, version, artifact_name), mode=0o600)
        host.run(commands.link_slot_release(layout, slot, release_dir) + " && "
                 f"systemctl daemon-reload && systemctl restart {q(self.unit_name(slot))}",
                 timeout=60, hint=f"see `journalctl -u {self.unit_name(slot)}` on the host")

    def stop_script(self, host: Host, slot: str) -> str:
        return f"systemctl stop {q(self.unit_name(slot))} 2>/dev/null; echo stopped"

    def running(self, host: Host, slot: str) -> bool:
        return host.run(f"systemctl is-active --quiet {q(self.unit_name(slot))}", timeout=30,
                        check=False, mutates=False).ok


def _sv_escape_pct(value: str) -> str:
    return value.replace("%", "%%")


def _sv_escape(value: str) -> str:
    return _sv_escape_pct(value.replace("\\", "\\\\").replace('"', '\\"'))


def _env_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")


def backend_for(cfg: Config) -> Backend:
    return {"plain": PlainBackend, "supervisor": SupervisorBackend,
            "systemd": SystemdBackend}[cfg.process.backend](cfg)
