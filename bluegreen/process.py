"""Start and stop one slot (a port) on one host, through a backend.

plain:      setsid + pidfile (pid and start time) + a log file per slot. No daemon needed.
supervisor: a [program:<app>-<slot>] file in supervisord's include dir, driven by supervisorctl.
systemd:    a template unit <app>@.service, instance = slot, with a per-slot EnvironmentFile;
            a started slot is enabled and a stopped one disabled, so a reboot brings back
            exactly the slots that ran. process.user / group: User=/Group= (supervisor: user=).

Backends only start and stop; the flow checks port ownership (commands.drain_stop_free)
the same way for all of them, so none of them ever kills a process it did not start.
"""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod

from bluegreen import commands
from bluegreen.commands import q
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError, CommandFailed
from bluegreen.hosts import Host
from bluegreen.layout import Layout


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


def app_user(cfg: Config, spec: HostSpec) -> str:
    """Who the app runs as on this host ('' = the init system's default: root for systemd,
    supervisord's own user for supervisor).

    process.user when set. Otherwise, under systemd driven through `sudo -n systemctl`, the
    SSH login user: someone who deploys as a non-root user would not expect the app to get
    root, and that user already owns paths.root (the releases the app reads). Configs
    without [sudo] keep running the app as before (root), so an upgrade changes nothing
    for them: their app may rely on files or ports only root can reach.
    """
    if cfg.process.user:
        return cfg.process.user
    login = spec.user or cfg.ssh.user
    if (cfg.process.backend == "systemd" and "systemctl" in cfg.sudo.app
            and login and login != "root"):
        return login
    return ""


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
                 hint="check the start command and that the release unpacked",
                 says=f"start {release_dir} in slot {slot} (port {self.cfg.port_of(slot)})")

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
    """supervisord runs `/bin/sh slots/<slot>/start.sh`; the script sources slots/<slot>/env.

    Nothing the user controls goes into the program file: supervisor's config parser cuts
    values at " ;" and " #" (inline comments), and its environment= parser (a non-POSIX
    shlex) can express neither a double quote nor a backslash. The start command and the
    environment live in shell files written with shlex quoting instead; the program file
    holds only paths we build, checked by `_sv_value`.
    """

    def program(self, slot: str) -> str:
        return f"{self.cfg.app}-{slot}"

    def ctl(self, *args: str) -> str:
        p = self.cfg.process
        return " ".join([p.supervisorctl, "-c", q(p.supervisor_conf), *args])

    def include_dir(self, host: Host) -> str:
        return self.cfg.process.supervisor_include_dir or f"{host.root}/supervisor"

    def env_path(self, host: Host, slot: str) -> str:
        return f"{self.layout(host).slot_dir(slot)}/env"

    def script_path(self, host: Host, slot: str) -> str:
        return f"{self.layout(host).slot_dir(slot)}/start.sh"

    def start_script(self, host: Host, slot: str, release_dir: str, version: str,
                     artifact_name: str) -> str:
        """What supervisord runs: load the slot's env file, enter the release, exec the app."""
        cmd = start_command(self.cfg, slot, release_dir, version, artifact_name)
        return "\n".join([
            "#!/bin/sh",
            f"# managed by bluegreen: {self.cfg.app} slot {slot}, run by supervisord",
            f"set -a; . {q(self.env_path(host, slot))} || exit 5; set +a",
            f"cd {q(release_dir)} || exit 4",
            commands.execable(cmd),
            "",
        ])

    def program_conf(self, host: Host, slot: str, release_dir: str, version: str,
                     artifact_name: str) -> str:
        # version and artifact_name reach the app through start.sh and the env file;
        # directory= names the release so that `supervisorctl update` sees a changed
        # program (and restarts it) whenever the slot gets another release.
        del version, artifact_name
        return "\n".join([
            f"; managed by bluegreen: {self.cfg.app} slot {slot}",
            f"[program:{self.program(slot)}]",
            f"command=/bin/sh {_sv_value(q(self.script_path(host, slot)), 'command')}",
            f"directory={_sv_value(release_dir, 'directory')}",
            "autostart=true",  # a rebooted host brings both slots back warm
            *([f"user={_sv_value(user, 'user')}"] if (user := app_user(self.cfg, host.spec))
              else []),
            "autorestart=unexpected",
            "startsecs=0",  # readiness is our health check's job, not supervisor's
            "stopasgroup=true",
            "killasgroup=true",
            f"stopwaitsecs={int(self.cfg.process.stop_timeout)}",
            f"stdout_logfile={_sv_value(self.layout(host).logfile(slot), 'stdout_logfile', 2)}",
            "redirect_stderr=true",
            "",
        ])

    def start(self, host: Host, slot: str, release_dir: str, version: str,
              artifact_name: str) -> None:
        path = f"{self.include_dir(host)}/{self.program(slot)}.conf"
        host.write_atomic(self.env_path(host, slot),  # holds [env]: 0600
                          commands.env_file(app_env(self.cfg, slot, release_dir, version)),
                          mode=0o600)
        host.write_atomic(self.script_path(host, slot), self.start_script(
            host, slot, release_dir, version, artifact_name), mode=0o700)
        host.write_atomic(path, self.program_conf(host, slot, release_dir, version,
                                                  artifact_name))
        prog = q(self.program(slot))
        user = app_user(self.cfg, host.spec)
        # supervisord runs start.sh as process.user, which must then read it and the 0600
        # env file: hand both over, in this same command. Only root (or that user) can; a
        # refusal stops here, before supervisor starts anything.
        chown = (f"chown -- {q(user)} {q(self.env_path(host, slot))} "
                 f"{q(self.script_path(host, slot))} 2>&1 || {{ echo \"ERROR: cannot give "
                 f"the slot's env file and start script to process.user {user} (log in as "
                 f"root or as {user})\"; exit 0; }}; " if user else "")
        # `update` exits non-zero (and says "error: ... CANT_REREAD", no "ERROR") when
        # supervisord cannot read the include dir, and prints "... no such file" when
        # supervisord is not running: both must stop us before `start` runs an older
        # program definition.
        out = host.run("( " + chown
                       + commands.link_slot_release(self.layout(host), slot, release_dir) + "; "
                       f"{self.ctl('reread')} >/dev/null 2>&1; "
                       f"{self.ctl('update', prog)} 2>&1 || echo \"ERROR: supervisorctl update "
                       f"exited $?\"; {self.ctl('start', prog)} 2>&1 || true )", timeout=60,
                       says=f"supervisorctl update and start {self.program(slot)}").stdout
        bad = [line for line in out.splitlines()
               if ("ERROR" in line or line.startswith("error:"))
               and "already started" not in line]
        if bad and "cannot give the slot's env file" in out:
            raise BluegreenError(f"supervisor cannot start {self.program(slot)} as "
                                 f"process.user {user}: {out.strip()}", host=host.label,
                                 phase="start",
                                 hint=f"log in as root (ssh.user) or as {user}, or leave "
                                      "process.user empty")
        if bad:
            raise BluegreenError(f"supervisorctl could not start {self.program(slot)}: "
                                 f"{out.strip()}", host=host.label, phase="start",
                                 hint=f"check that {self.cfg.process.supervisor_conf} includes "
                                      f"{self.include_dir(host)}/*.conf and supervisord runs")

    def stop_script(self, host: Host, slot: str) -> str:
        # "no such process" / "not running" mean nothing of ours runs there: fine. Any
        # other failure (supervisord down: "... no such file", exit 7) is an error, not
        # "stopped": we cannot know what runs.
        return (f"out=$({self.ctl('stop', q(self.program(slot)))} 2>&1); rc=$?; "
                'echo "$out"; '
                'case "$out" in *"no such process"*|*"not running"*) echo none;; '
                '*ERROR*) echo "supervisorctl stop failed: $out" >&2; exit 1;; '
                '*) if [ "$rc" -ne 0 ]; then echo "supervisorctl stop failed (exit $rc): '
                '$out (is supervisord running?)" >&2; exit 1; fi; echo stopped;; esac')

    def running(self, host: Host, slot: str) -> bool:
        out = host.run(f"{self.ctl('status', q(self.program(slot)))} 2>&1 || true",
                       timeout=30, mutates=False).stdout
        return "RUNNING" in out


class SystemdBackend(Backend):
    @property
    def systemctl(self) -> str:
        """`sudo -n systemctl` for a non-root SSH user with sudo.app = ["systemctl"]."""
        from bluegreen.config import SUDO
        return f"{SUDO} systemctl" if "systemctl" in self.cfg.sudo.app else "systemctl"

    def unit_name(self, slot: str) -> str:
        return f"{self.cfg.app}@{slot}.service"

    def unit_text(self, host: Host) -> str:
        """A template unit; %i is the slot. Its env file says which release, port, version.

        The start command is a `sh -c` script that reads the substituted values from its
        environment ("$BLUEGREEN_VERSION", ...), so a version or a path is only ever data
        to the shell. The whole script is then escaped for systemd, which expands %
        specifiers, $ variables and C escapes (even inside quotes) in ExecStart.
        """
        script = self.cfg.start.format(
            release='"$BLUEGREEN_RELEASE"', port='"$BLUEGREEN_PORT"', slot='"$BLUEGREEN_SLOT"',
            app=q(self.cfg.app), artifact='"$BLUEGREEN_ARTIFACT"',
            version='"$BLUEGREEN_VERSION"')
        exec_start = "/bin/sh -c " + _sd_escape(shlex.quote(commands.execable(script)))
        return "\n".join([
            "# managed by bluegreen: do not edit, re-rendered on every deploy",
            "[Unit]",
            f"Description=bluegreen {self.cfg.app} slot %i",
            "After=network.target",
            "",
            "[Service]",
            # exec, not simple: `systemctl restart` fails at once when the service cannot
            # be started at all (process.user missing on the host: status 217), instead of
            # succeeding and leaving the health check to time out on an empty log
            "Type=exec",
            *self.identity_lines(host),
            f"EnvironmentFile={_sd_path(host.root)}/slots/%i/env",
            f"WorkingDirectory={_sd_path(host.root)}/slots/%i/release",
            f"ExecStart={exec_start}",
            "KillMode=control-group",
            f"TimeoutStopSec={int(self.cfg.process.stop_timeout)}",
            "Restart=on-failure",
            f"StandardOutput=append:{_sd_path(host.root)}/slots/%i/app.log",
            "StandardError=inherit",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])

    def identity_lines(self, host: Host) -> list[str]:
        """User= / Group= (names checked at load: no specifier, quote or space in them)."""
        lines = []
        user = app_user(self.cfg, host.spec)
        if user:
            lines.append(f"User={user}")
        if self.cfg.process.group:
            lines.append(f"Group={self.cfg.process.group}")
        return lines

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
        unit = self.unit_name(slot)
        try:
            # enable in the same command (no extra round trip): a running slot comes back
            # after a reboot, as supervisor's autostart does; only once it did start, so a
            # unit that cannot start is never left enabled. A failed restart prints the
            # main process's exit status (`show` needs no sudo): 216/217 name a
            # Group=/User= the host does not have.
            host.run(commands.link_slot_release(layout, slot, release_dir) + " && "
                     f"{self.systemctl} daemon-reload && "
                     f"{{ {self.systemctl} restart {q(unit)} || {{ rc=$?; "
                     f"echo \"ExecMainStatus=$(systemctl show -p ExecMainStatus --value "
                     f"{q(unit)})\"; (exit $rc); }}; }} && "
                     f"{self.systemctl} enable {q(unit)}",
                     timeout=60, hint=f"see `journalctl -u {unit}` on the host",
                     says=f"systemctl restart and enable {unit}")
        except CommandFailed as exc:
            # The non-root setup's one-time link into /etc/systemd/system forgotten (or
            # systemd_unit_dir not a unit directory): journalctl has nothing to say then.
            if f"Unit {unit} not found" in exc.stdout + exc.stderr:
                exc.hint = unit_not_found_hint(unit_path, host.label)
            identity = identity_failure(exc.stdout, app_user(self.cfg, host.spec),
                                        self.cfg.process.group, host.label)
            if identity:
                exc.hint = identity
            raise

    def stop_script(self, host: Host, slot: str) -> str:
        # exit 5: the unit was never loaded (first deploy to this slot): nothing to stop.
        # A stopped slot is disabled too, so that a reboot brings back only what runs now.
        unit = q(self.unit_name(slot))
        return (f"out=$({self.systemctl} stop {unit} 2>&1); rc=$?; "
                'case $rc in 0) '
                f'out=$({self.systemctl} disable {unit} 2>&1) || '
                '{ echo "systemctl disable failed: $out" >&2; exit 1; }; echo stopped;; '
                '5) echo none;; '
                '*) echo "systemctl stop failed (exit $rc): $out" >&2; exit 1;; esac')

    def running(self, host: Host, slot: str) -> bool:
        return host.run(f"systemctl is-active --quiet {q(self.unit_name(slot))}", timeout=30,
                        check=False, mutates=False).ok


def identity_failure(stdout: str, user: str, group: str, host: str) -> str:
    """The hint for a unit whose User= / Group= does not exist on the host ('' if the
    start failed for another reason). systemd's exit statuses: 217 USER, 216 GROUP."""
    status = re.search(r"^ExecMainStatus=(\d+)$", stdout, re.M)
    code = status.group(1) if status else ""
    if code == "217" and user:
        return (f"the app's user {user!r} (User= in the unit) does not exist on {host}: "
                f"create it there (useradd --system {q(user)}) or set process.user to a "
                "user that exists, then deploy again")
    if code == "216" and group:
        return (f"the app's group {group!r} (Group= in the unit) does not exist on {host}: "
                f"create it there (groupadd --system {q(group)}) or set process.group, "
                "then deploy again")
    return ""


def unit_not_found_hint(unit_path: str, host: str) -> str:
    """What to do when systemd does not know the unit bluegreen just wrote to unit_path."""
    return (f"systemd does not read units from {unit_path.rpartition('/')[0]}: as root on "
            f"{host}, link it once: ln -s {q(unit_path)} /etc/systemd/system/ "
            "(or set process.systemd_unit_dir to a directory systemd reads, such as "
            "/etc/systemd/system), then deploy once more")


def _sv_value(value: str, key: str, expansions: int = 1) -> str:
    """A value for supervisor's config parser: % escaped once per %(name)s expansion
    supervisor applies (two for *_logfile), and refused where no escape exists: a newline,
    or ";" / "#" after whitespace (an inline comment)."""
    if "\n" in value or "\r" in value or re.search(r"\s[;#]", value):
        raise BluegreenError(
            f"cannot write {key}={value!r} into a supervisor program file: supervisor reads "
            "a newline, or ';' / '#' after a space, as the end of the value",
            phase="start", hint="use a paths.root without such characters")
    return value.replace("%", "%" * (2 ** expansions))


def _sd_escape(value: str) -> str:
    """Make text literal in a systemd unit setting that expands specifiers (%), variables ($)
    and C escapes (\\, inside quotes too)."""
    return value.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")


def _sd_path(value: str) -> str:
    """A path in a unit setting that expands specifiers but not escapes or variables."""
    if "\n" in value or "\r" in value:
        raise BluegreenError(f"cannot write path {value!r} into a systemd unit",
                             phase="start", hint="use a paths.root without newlines")
    return value.replace("%", "%%")


def _env_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")


def backend_for(cfg: Config) -> Backend:
    return {"plain": PlainBackend, "supervisor": SupervisorBackend,
            "systemd": SystemdBackend}[cfg.process.backend](cfg)
