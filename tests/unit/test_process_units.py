"""What the process backends write for the init system, checked by the real parsers.

systemd: the template unit goes through `systemd-analyze verify` (works without a running
systemd). How systemd decodes the `sh -c` script in ExecStart (specifiers, quotes, C
escapes) is read back from systemd itself: `verify` names a bad executable *after*
decoding it, so the script placed as the executable name comes back decoded.
supervisor: the program file is parsed by supervisor's own ServerOptions, the way
supervisord reads it, and the start script it names is run by a real /bin/sh.
pid_is_ours: against /proc of real processes (zombie, recycled pid, odd comm).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bluegreen.commands import env_file
from bluegreen.config import Config, HostSpec, from_dict
from bluegreen.errors import BluegreenError
from bluegreen.hosts import LocalHost
from bluegreen.layout import Layout
from bluegreen.process import (
    PlainBackend,
    SupervisorBackend,
    SystemdBackend,
    app_env,
    pid_is_ours,
    start_command,
    unit_not_found_hint,
)

# A start command with every character that means something to systemd (%, $, \),
# supervisor (%, " ;", " #"), or the shell (quotes, $, \).
TRICKY_START = (
    "{release}/bin/runner {port} --label 'it'\"'\"'s 100% done' --greet \"$GREETING\" "
    "--re 'a\\tb\\\\c' --hash 'x #y' --semi 'p ;q' --v {version} --art {artifact} "
    "--slot {slot} --app {app}"
)
TRICKY_ENV = {
    "GREETING": 'hi "there" 100% $USER `x` \\n \\\\ end',
    "SEMI": "a ;b #c",
    "EMPTY": "",
}
TRICKY_VERSION = "v1 $(touch pwned) `touch pwned` ;x %i"  # cwd: the release dir
RUNNER = """#!/bin/sh
# prints its arguments, one per line, then the environment variables the test cares about
for a in "$@"; do printf 'ARG<%s>\\n' "$a"; done
for v in GREETING SEMI EMPTY BLUEGREEN_SLOT BLUEGREEN_VERSION; do
  eval "printf 'ENV<%s=%s>\\n' $v \\"\\${$v-UNSET}\\""
done
printf 'PWD<%s>\\n' "$PWD"
"""


def make_cfg(root: Path, backend: str, **process: str) -> Config:
    return from_dict({
        "app": "demo",
        "start": TRICKY_START,
        "paths": {"root": str(root)},
        "process": {"backend": backend, **process},
        "env": dict(TRICKY_ENV),
    })


def make_release(root: Path) -> str:
    """A release dir with a bin/runner that reports how it was started."""
    release = root / "demo" / "releases" / "v1-abc"
    (release / "bin").mkdir(parents=True)
    runner = release / "bin" / "runner"
    runner.write_text(RUNNER)
    runner.chmod(0o755)
    for slot in ("blue", "green"):
        (root / "demo" / "slots" / slot).mkdir(parents=True, exist_ok=True)
    return str(release)


def expected_args(release: str, port: int, slot: str = "blue") -> list[str]:
    return [str(port), "--label", "it's 100% done", "--greet", TRICKY_ENV["GREETING"],
            "--re", "a\\tb\\\\c", "--hash", "x #y", "--semi", "p ;q", "--v", TRICKY_VERSION,
            "--art", f"{release}/app.tar.gz", "--slot", slot, "--app", "demo"]


def parse_report(text: str) -> tuple[list[str], dict[str, str], str]:
    args = re.findall(r"^ARG<(.*?)>$", text, re.M | re.S)
    env = dict(m.split("=", 1) for m in re.findall(r"^ENV<(.*?)>$", text, re.M | re.S))
    pwd = re.findall(r"^PWD<(.*?)>$", text, re.M)
    return args, env, pwd[0] if pwd else ""


@pytest.fixture
def odd_root(tmp_path: Path) -> Path:
    """A paths.root with a space, a % specifier, a lone % and a $ in it."""
    root = tmp_path / "srv %n 50% $x"
    root.mkdir()
    return root


def test_plain_backend_reference_argv(odd_root: Path) -> None:
    """The reference the other backends must match: the plain backend's start command."""
    cfg = make_cfg(odd_root, "plain")
    release = make_release(odd_root)
    cmd = start_command(cfg, "blue", release, TRICKY_VERSION, "app.tar.gz")
    env = {**os.environ, **app_env(cfg, "blue", release, TRICKY_VERSION)}
    out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, env=env,
                         check=True, timeout=10).stdout
    args, _, _ = parse_report(out)
    assert args == expected_args(release, cfg.slots.blue)


# ---------------------------------------------------------------- systemd

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)")


def systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    # --man=no: do not look up Documentation= man pages; SYSTEMD_LOG_LEVEL=info keeps
    # debug chatter out while every warning about the unit still shows.
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "info",
                               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})


def render_unit(cfg: Config, unit_dir: Path) -> tuple[SystemdBackend, LocalHost, Path]:
    backend = SystemdBackend(cfg)
    host = LocalHost(HostSpec("local"), cfg)
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / "demo@.service").write_text(backend.unit_text(host))
    return backend, host, unit_dir / "demo@blue.service"  # the instance, from the template


def unit_setting(text: str, key: str) -> str:
    (value,) = re.findall(rf"^{key}=(.*)$", text, re.M)
    return value


def systemd_decode_word(raw: str, unit_dir: Path) -> str:
    """How systemd decodes one ExecStart word (specifiers with %i=blue, quotes, C escapes).

    Placed after a non-existent directory as the executable, the word comes back in
    verify's complaint about it, decoded by systemd's own parser. systemd also simplifies
    that path ("//" -> "/"), so pass words without such sequences.
    """
    probe = unit_dir / "probe@.service"
    probe.write_text(f"[Service]\nExecStart=/nonexistent/{raw}\n")
    try:
        out = systemd_verify(unit_dir / "probe@blue.service").stderr
    finally:
        probe.unlink()
    m = (re.search(r"contains special characters: /nonexistent/(.*)$", out, re.M)
         or re.search(r"Command /nonexistent/(.*) is not executable", out, re.M))
    assert m, f"systemd-analyze did not name the probe executable:\n{out}"
    return m.group(1)


def decode_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= rules for the form the backend writes, KEY="value":
    inside double quotes a backslash escapes one of " \\ ` $ (and is dropped); before any
    other character it stays. No variable expansion (systemd.exec(5))."""
    env: dict[str, str] = {}
    for m in re.finditer(r'^([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"$', text, re.M | re.S):
        env[m.group(1)] = re.sub(r'\\(.)', lambda e: e.group(1) if e.group(1) in '"\\`$'
                                 else e.group(0), m.group(2), flags=re.S)
    return env


@needs_systemd_analyze
def test_systemd_unit_passes_systemd_analyze_verify(odd_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(odd_root, "systemd")
    _, _, unit = render_unit(cfg, tmp_path / "units")
    result = systemd_verify(unit)
    complaints = [line for line in result.stderr.splitlines()
                  if "demo@" in line or str(unit.parent) in line]
    assert result.returncode == 0 and not complaints, result.stderr


@needs_systemd_analyze
def test_systemd_verify_catches_what_we_guard_against(tmp_path: Path) -> None:
    """The checker is not a rubber stamp: an unescaped % specifier, a stray C escape and
    unbalanced quoting are all reported."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for bad, expect in [("/bin/sh -c 'echo 5%Z'", "specifier"),
                        ("/bin/sh -c 'echo a\\qb'", "escape"),
                        ("/bin/sh -c 'unbalanced", "Unbalanced quoting")]:
        (unit_dir / "bad@.service").write_text(f"[Service]\nExecStart={bad}\n")
        result = systemd_verify(unit_dir / "bad@blue.service")
        assert expect in result.stderr, (bad, result.stderr)


@needs_systemd_analyze
def test_systemd_execstart_runs_the_same_command_as_plain(odd_root: Path,
                                                          tmp_path: Path) -> None:
    """Decode ExecStart's script with systemd, give it the env file's environment, run it:
    the app must get exactly the argv the plain backend gives it."""
    cfg = make_cfg(odd_root, "systemd")
    release = make_release(odd_root)
    backend, host, unit = render_unit(cfg, tmp_path / "units")
    exec_start = unit_setting(backend.unit_text(host), "ExecStart")
    assert exec_start.startswith("/bin/sh -c ")
    script = systemd_decode_word(exec_start.removeprefix("/bin/sh -c "), unit.parent)
    # the one exec-time rule left: "$$" is a literal "$" (no ${VAR} remains unescaped)
    assert not re.search(r"(?<!\$)\$\{", script.replace("$$", ""))
    script = script.replace("$$", "$")
    env_text = backend.env_file("blue", release, TRICKY_VERSION, "app.tar.gz")
    env = decode_env_file(env_text)
    assert env == {**app_env(cfg, "blue", release, TRICKY_VERSION),
                   "BLUEGREEN_ARTIFACT": f"{release}/app.tar.gz"}
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], **env}, cwd=release, check=True,
                         timeout=10).stdout
    args, seen_env, _ = parse_report(out)
    assert args == expected_args(release, cfg.slots.blue)
    assert seen_env["GREETING"] == TRICKY_ENV["GREETING"]
    assert seen_env["BLUEGREEN_VERSION"] == TRICKY_VERSION
    assert not (Path(release) / "pwned").exists()  # the version was data, never shell


@needs_systemd_analyze
def test_systemd_paths_with_percent_are_literal(odd_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(odd_root, "systemd")
    backend, host, unit = render_unit(cfg, tmp_path / "units")
    text = backend.unit_text(host)
    for key, tail in [("EnvironmentFile", "env"), ("WorkingDirectory", "release")]:
        value = unit_setting(text, key).removeprefix("/")  # see systemd_decode_word
        decoded = systemd_decode_word(shlex.quote(value), unit.parent)
        assert "/" + decoded == f"{odd_root}/demo/slots/blue/{tail}"


def test_systemd_env_file_round_trips_every_character(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "systemd")
    text = SystemdBackend(cfg).env_file("green", "/r/x", TRICKY_VERSION, "app.jar")
    env = decode_env_file(text)
    assert env["GREETING"] == TRICKY_ENV["GREETING"] and env["SEMI"] == TRICKY_ENV["SEMI"]
    assert env["EMPTY"] == "" and env["BLUEGREEN_VERSION"] == TRICKY_VERSION
    assert env["BLUEGREEN_ARTIFACT"] == "/r/x/app.jar" and env["BLUEGREEN_SLOT"] == "green"
    assert len(env) == len(text.splitlines())  # one line per variable, none lost


# ---------------------------------------------------------------- supervisor


def supervisor_parse(conf: Path, program_file: Path, workdir: Path) -> object:
    """Parse the program file exactly as supervisord does (its ServerOptions)."""
    from supervisor.options import ServerOptions

    conf.write_text(f"[supervisord]\nlogfile={workdir}/supervisord.log\n"
                    f"pidfile={workdir}/supervisord.pid\n"
                    f"[include]\nfiles={program_file}\n")
    opts = ServerOptions()
    opts.configfile = str(conf)
    opts.process_config(do_usage=False)
    (group,) = opts.process_group_configs
    (proc,) = group.process_configs
    return proc


def test_supervisor_program_file_keeps_every_value_intact(odd_root: Path,
                                                          tmp_path: Path) -> None:
    cfg = make_cfg(odd_root, "supervisor", supervisor_conf=str(tmp_path / "s.conf"))
    release = make_release(odd_root)
    backend = SupervisorBackend(cfg)
    host = LocalHost(HostSpec("local"), cfg)
    # the files start() writes, written here the same way
    host.write_atomic(backend.env_path(host, "blue"),
                      env_file(app_env(cfg, "blue", release, TRICKY_VERSION)), mode=0o600)
    host.write_atomic(backend.script_path(host, "blue"), backend.start_script(
        host, "blue", release, TRICKY_VERSION, "app.tar.gz"), mode=0o700)
    program = tmp_path / "demo-blue.conf"
    program.write_text(backend.program_conf(host, "blue", release, TRICKY_VERSION,
                                            "app.tar.gz"))
    proc = supervisor_parse(tmp_path / "s.conf", program, tmp_path)
    assert proc.name == "demo-blue"  # type: ignore[attr-defined]
    assert proc.directory == release  # type: ignore[attr-defined]
    assert proc.stdout_logfile == Layout(f"{odd_root}/demo").logfile("blue")  # type: ignore[attr-defined]
    argv = shlex.split(proc.command)  # type: ignore[attr-defined]  # supervisor's own split
    assert argv == ["/bin/sh", backend.script_path(host, "blue")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10,
                         env={"PATH": os.environ["PATH"]}, cwd="/").stdout
    args, env, pwd = parse_report(out)
    assert args == expected_args(release, cfg.slots.blue)
    assert env["GREETING"] == TRICKY_ENV["GREETING"] and env["SEMI"] == TRICKY_ENV["SEMI"]
    assert env["EMPTY"] == "" and env["BLUEGREEN_VERSION"] == TRICKY_VERSION
    assert pwd == release
    assert (os.stat(backend.env_path(host, "blue")).st_mode & 0o077) == 0  # secrets: 0600


def test_supervisor_program_file_refuses_what_supervisor_cannot_read(tmp_path: Path) -> None:
    """supervisor cuts a value at " ;" or " #"; rather than a truncated command, a clear error."""
    root = tmp_path / "srv ;x"
    cfg = make_cfg(root, "supervisor", supervisor_conf=str(tmp_path / "s.conf"))
    backend = SupervisorBackend(cfg)
    host = LocalHost(HostSpec("local"), cfg)
    with pytest.raises(BluegreenError, match="after a space"):
        backend.program_conf(host, "blue", f"{root}/demo/releases/v1", "v1", "a.tar.gz")


def test_supervisor_program_file_changes_with_the_release(tmp_path: Path) -> None:
    """`supervisorctl update` restarts a program only when its definition changed."""
    cfg = make_cfg(tmp_path, "supervisor", supervisor_conf=str(tmp_path / "s.conf"))
    backend = SupervisorBackend(cfg)
    host = LocalHost(HostSpec("local"), cfg)
    one = backend.program_conf(host, "blue", "/r/releases/v1-a", "v1", "a.tar.gz")
    two = backend.program_conf(host, "blue", "/r/releases/v2-b", "v2", "a.tar.gz")
    assert one != two


# ---------------------------------------------------------------- pid_is_ours


def stat_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text()


def starttime_of(pid: int) -> str:
    return stat_of(pid).rsplit(")", 1)[1].split()[19]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_pid_is_ours_for_a_live_process(sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    assert pid_is_ours(f"{pid} {starttime_of(pid)}\n", stat_of(pid))


def test_recycled_pid_is_not_ours(sleeper: subprocess.Popen[bytes]) -> None:
    """Same pid, another start time: the pid was reused by a process we did not start."""
    pid = sleeper.pid
    other = str(int(starttime_of(pid)) + 1)
    assert not pid_is_ours(f"{pid} {other}", stat_of(pid))


def test_zombie_is_not_running() -> None:
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while stat_of(proc.pid).rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.01)
        text = stat_of(proc.pid)
        assert not pid_is_ours(f"{proc.pid} {starttime_of(proc.pid)}", text)
    finally:
        proc.wait(timeout=5)


def test_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    """A process can name itself ") Z 1 (" : only the LAST ")" ends the comm field."""
    ready = tmp_path / "ready"
    code = ("import pathlib, sys, time\n"
            "pathlib.Path('/proc/self/comm').write_text('a) Z 1 (b c')\n"
            f"pathlib.Path({str(ready)!r}).write_text('x')\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        text = stat_of(proc.pid)
        assert "(a) Z 1 (b c)" in text  # the kernel really reports that comm
        assert pid_is_ours(f"{proc.pid} {starttime_of(proc.pid)}", text)
        assert not pid_is_ours(f"{proc.pid} 1", text)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.mark.parametrize("pidfile,stat", [
    ("", "1 (x) S 0"),
    ("123", "123 (x) S " + " ".join(["0"] * 30)),
    ("123 456 789", "123 (x) S " + " ".join(["0"] * 30)),
    ("123 456", ""),  # the process is gone: no /proc/PID/stat
    ("123 456", "123 (x) S 0 0"),  # truncated stat
    ("123 456", "123 x S " + " ".join(["456"] * 30)),  # no ")" at all
])
def test_malformed_input_is_not_ours(pidfile: str, stat: str) -> None:
    assert not pid_is_ours(pidfile, stat)


def test_dead_process_state_x_is_not_running() -> None:
    fields = ["X", *(["0"] * 18), "4242", "0"]
    assert not pid_is_ours("99 4242", "99 (app) " + " ".join(fields))
    fields[0] = "S"
    assert pid_is_ours("99 4242", "99 (app) " + " ".join(fields))


def test_plain_running_reads_pidfile_and_proc(tmp_path: Path,
                                              sleeper: subprocess.Popen[bytes]) -> None:
    cfg = make_cfg(tmp_path, "plain")
    host = LocalHost(HostSpec("local"), cfg)
    backend = PlainBackend(cfg)
    pidfile = Path(backend.layout(host).pidfile("blue"))
    assert not backend.running(host, "blue")  # no pidfile
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{sleeper.pid} {starttime_of(sleeper.pid)}\n")
    assert backend.running(host, "blue")
    pidfile.write_text(f"{sleeper.pid} 1\n")
    assert not backend.running(host, "blue")  # recycled
    pidfile.write_text("garbage\n")
    assert not backend.running(host, "blue")


def test_unit_not_found_hint_is_a_link_command_a_shell_runs_as_printed() -> None:
    """The printed `ln -s` quotes a unit path with a space, so pasting it works."""
    hint = unit_not_found_hint("/srv/blue green/units/shop@.service", "app1")
    start = hint.index("ln -s ")
    command = hint[start:hint.index(" (or set", start)]
    assert shlex.split(command) == ["ln", "-s", "/srv/blue green/units/shop@.service",
                                    "/etc/systemd/system/"]
    assert "as root on app1" in hint and "/srv/blue green/units:" in hint
