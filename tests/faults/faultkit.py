"""What the fault suite shares: the cells (fault x point x mode x host type), the rig each
cell runs on (a real nginx, a real sshd for SSH hosts, the demo app), the load client that
runs through it, and the checks every cell makes.

A cell: deploy v1; start the load client against the front door; deploy v2 with one fault
injected at one point (bluegreen/failpoints.py); then check that
  (a) the front door was served by a healthy slot the whole time (lua: 0 failed requests;
      reload: only the keep-alive drops a reload is known to cause, counted and reported),
  (b) `fab status --json` says what is true: the slot it says nginx routes to is the one
      the front door answers from, the live release is the one being served, the slots
      it calls healthy answer on their ports, and its exit code is the one that truth
      implies (0: consistent and healthy),
  (c) the very next plain `fab deploy` of v3 succeeds with no manual step and the front
      door then serves v3 (and status says so, exit 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.loadgen import ClassConfig, LoadGen, LoadResult
from testkit.nginx import PrivateNginx
from testkit.project import Project, Ran, ssh_toml
from testkit.sshd import TestSshd

FAILPOINTS = "BLUEGREEN_FAILPOINTS"
MODES = ("reload", "lua")
HOSTS = ("local", "ssh")
SIGNALS = ("kill", "term")

# Every point a deploy passes, in the order it passes them (failpoints.py names them).
# Phases that are hooks (pre-deploy, pre-switch, post-switch, post-deploy) run nothing
# without a hook; `announce` only prints: their boundaries are the neighbours' boundaries.
KILL_POINTS: tuple[str, ...] = (
    "before:connect",       # nothing opened yet
    "before:lock",          # every host connected, nothing taken
    "before:recover",       # the lock is held
    "before:state",
    "before:upload",        # state read, consistency checked, target chosen
    "upload.mid",           # the artifact sits under a temp name, not verified or unpacked
    "upload.unpacked",      # unpacked, pruned; state does not say the slot changes hands
    "before:stop",          # state says the idle slot now holds v2, "starting"
    "stop.drained",         # drained, not stopped
    "before:start",         # the idle slot is stopped
    "before:health",        # v2 started
    "health.probing",       # health probes in flight
    "before:switch",        # healthy, nothing in traffic touched
    "switch.after-intent",  # the journal says a switch is under way; nginx untouched
    "switch.after-install",  # the new nginx file is in place, not applied (no reload/flip)
    "switch.after-apply",   # nginx routes to v2; not verified, state says v1
    "before:record",        # verified; state still says v1
    "record.after-state",   # state says v2; the journal is still there
    "before:watch",         # committed and journal cleared; lock held, no history entry
    "before:post-switch",   # the watch window passed (0 s in these projects)
    "after:post-deploy",    # everything done but the history entry and the unlock
)
# Points inside a phase where a cut SSH link has something to break, plus the
# boundaries between the remote steps
DROP_POINTS: tuple[str, ...] = tuple(p for p in KILL_POINTS
                                     if p not in ("before:connect", "before:lock"))
# Where a host goes down (its sshd stops) in the middle of a deploy
DOWN_POINTS: tuple[str, ...] = ("before:upload", "before:stop", "health.probing",
                                "switch.after-install", "switch.after-apply", "before:record")
# Where the disk fills up
FILL_POINTS: tuple[str, ...] = ("before:upload", "upload.mid", "before:switch")
TMPFS_MB = 16  # paths.root of a disk-full cell: a tmpfs this big


@dataclass(frozen=True)
class Cell:
    fault: str  # kill | term | drop | down | fill
    point: str
    mode: str  # reload | lua
    host: str  # local | ssh
    tmpfs: bool = False  # paths.root on a small tmpfs of its own

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.point}-{self.mode}-{self.host}"


def kill_cells() -> list[Cell]:
    return [Cell(sig, point, mode, host) for point in KILL_POINTS for sig in SIGNALS
            for mode in MODES for host in HOSTS]


def drop_cells() -> list[Cell]:
    return [Cell("drop", point, mode, "ssh") for point in DROP_POINTS for mode in MODES]


def down_cells() -> list[Cell]:
    return [Cell("down", point, mode, "ssh") for point in DOWN_POINTS for mode in MODES]


def fill_cells() -> list[Cell]:
    return [Cell("fill", point, mode, host, tmpfs=True) for point in FILL_POINTS
            for mode in MODES for host in HOSTS]


# The bounded subset `make test` runs: one cell per way a run can be cut short, across
# both modes and both host types, at the points where state and traffic disagree most.
REPRESENTATIVE: frozenset[str] = frozenset({
    Cell("kill", "switch.after-install", "reload", "local").id,  # file new, no reload
    Cell("term", "switch.after-apply", "lua", "ssh").id,         # flipped: undone by a flip
    Cell("term", "health.probing", "reload", "ssh").id,          # signal mid-phase
    Cell("kill", "record.after-state", "lua", "local").id,       # committed, journal left
    Cell("kill", "before:stop", "lua", "local").id,              # lock held by a dead run
    Cell("drop", "switch.after-install", "reload", "ssh").id,    # link cut inside the switch
})

# ------------------------------------------------------------------------------ known defects
# Found by this suite in the core; each is pinned in its smallest deterministic form in
# test_core_defects.py (xfail strict). The lead fixes the core; then these marks come off.
TERM_AFTER_STATE = (
    "DEFECT (phases.record_live + run.perform): a SIGTERM that arrives after record_live "
    "wrote state.json (live = the new slot) and before run.change.commit() (over SSH: any "
    "SIGTERM during that SFTP write, since interrupts.step() raises at the write's end) "
    "makes perform() undo the switch: nginx is put back on the old slot and the journal "
    "cleared, but state.json keeps saying the new slot is live. The run prints "
    "'INTERRUPTED ... traffic stays on the live slot'; `fab status` then exits 5 (file and "
    "front door say blue, state says green) and the next plain `fab deploy` refuses "
    "('state says live slot is green but nginx routes to blue'), as does the printed "
    "'Re-run the same command'. The state write and "
    "commit() (and clearing the journal) must be one step a signal cannot split, or undo "
    "must also put the state back.")

LUA_RECOVERY_RELOADS = (
    "DEFECT (phases.recover_interrupted): recovery restores with Applied(previous, "
    "reloaded=True, flipped=True), so in lua mode it always reloads nginx, although a "
    "flip back is enough when the interrupted change had the same shape (the switch only "
    "flipped the live port). A reload on nginx < 1.27.4 closes idle keep-alive client "
    "connections: the fault suite saw a keep-alive POST fail in lua mode "
    "(kill-switch.after-apply-lua-ssh: 1 RemoteDisconnected of 8837), breaking lua mode's "
    "zero-failed-requests promise. Recovery should reload only when the installed file's "
    "shape differs from the previous one (parse_marker(...).shape).")

INTERRUPTED_AFTER_COMMIT = (
    "DEFECT (runner.py message + run.perform history entry): a SIGTERM after the record "
    "phase committed the switch (state and nginx both on the new slot, journal cleared) is "
    "reported as 'INTERRUPTED: a switch in progress was undone ...; traffic stays on the "
    "live slot', and history records the deploy as 'interrupted in post-switch; traffic "
    "was not touched' (`fab history` shows it so), while the new release is live. Both "
    "must say the switch committed (only the post hooks were skipped).")

STALE_PHASE_LABEL = (
    "DEFECT (errors from the primary's state/lock/journal I/O take Host.phase, which only "
    "fleet.on_all and the switch set): a failure in the ledger's own I/O is reported with "
    "the phase that last used that host, not the one that failed: an SSH link lost before "
    "the switch's lock re-check prints 'FAILED [phase=health ...]', one lost before the "
    "record phase's state write prints 'FAILED [phase=switch ...]', and history records "
    "the same wrong phase. The run knows the phase it is in (perform's `current`).")

DEAD_LINK_NOT_REOPENED = (
    "WAS A DEFECT (hosts.SshHost.http_get and the cached SFTP client; fixed on main since "
    "the lock heartbeat at every phase reconnects first): after the SSH link dropped "
    "between the apply and the verify, verify's front-door probes went through the dead "
    "transport ('SSH session not active') for the whole nginx.verify_timeout (10 s), then "
    "the undo's first SFTP write failed on the stale SFTP client: 'the previous nginx "
    "config could NOT be restored ... fix nginx there by hand NOW', followed by 'Traffic "
    "stays on blue' while the front door served green until the next command recovered.")

STUCK_LOCK_ON_FULL_DISK = (
    "DEFECT (hosts.Host.write_atomic + the per-phase lock heartbeat): on a full disk the "
    "heartbeat's write of lock/owner.json fails and write_atomic leaves its temp file "
    "(lock/.owner.json.XXXXXXXX.tmp) inside the lock directory. The run's release then "
    "removes owner.json but cannot rmdir the lock ('Directory not empty'; the warning says "
    "'the next run from this machine breaks it by itself', which is false), so once the "
    "space is back the next plain `fab deploy` refuses ('another deploy holds the lock: an "
    "unknown owner (no owner record yet)'), after the ownerless grace it fails on the same "
    "rmdir, and `fab unlock` fails too ('cannot remove .../lock: Directory not empty'). "
    "Only removing the temp file by hand frees it. write_atomic should remove its temp file "
    "when the write fails, and breaking a lock should remove what is inside it.")

# cell id -> (reason, strict). Strict where the failure is deterministic; not strict where
# the defect shows only when a keep-alive request races the needless reload.
KNOWN: dict[str, tuple[str, bool]] = {}  # every defect the suite found is fixed (see
# test_core_defects.py: each pins its defect in its smallest form)


# Small and steady: the machine running the suite has two cores shared with the deploys
LOAD_MIX = {
    "ka_get": ClassConfig(workers=2, pause=0.002),
    "ka_post": ClassConfig(workers=1, pause=0.002),
    "fresh_get": ClassConfig(workers=1, pause=0.01),
    "slow": ClassConfig(workers=1, pause=0.0),
}
# What a reload may do to a keep-alive client (README, "Switch modes"): the connection is
# closed under a request just sent. Nothing else is excused, in any mode.
KEEPALIVE_DROPS = frozenset({"RemoteDisconnected", "ConnectionResetError",
                             "BrokenPipeError", "ProtocolError", "IncompleteRead"})


@dataclass
class Rig:
    """One cell's world: nginx in front, sshd for SSH hosts, the project."""

    project: Project
    nginx: PrivateNginx
    mode: str
    host: str
    sshd: TestSshd | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def slot_ports(self) -> dict[str, int]:
        return {"blue": self.project.blue, "green": self.project.green}

    def fab(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> Ran:
        return self.project.fab(*args, check=None, env=env, timeout=timeout)

    def deploy(self, version: str, *extra: str, env: dict[str, str] | None = None) -> Ran:
        return self.project.deploy(version, *extra, check=None, env=env)


def make_project(tmp: Path, nginx: PrivateNginx, artifacts: dict[str, Path], mode: str,
                 sshd: TestSshd | None, *, root: Path | None = None) -> Project:
    hosts = 'app = ["local"]' if sshd is None else f'app = ["127.0.0.1:{sshd.port}"]'
    proj = Project(tmp / "app", nginx, artifacts, hosts,
                   ssh_toml=ssh_toml(sshd) if sshd is not None else "", mode=mode)
    proj.write()
    if root is not None:  # paths.root elsewhere (a small tmpfs)
        text = (proj.dir / "bluegreen.toml").read_text()
        text = text.replace(json.dumps(str(proj.srv)), json.dumps(str(root)))
        (proj.dir / "bluegreen.toml").write_text(text)
    return proj


# ------------------------------------------------------------------------------ truth


@dataclass(frozen=True)
class FrontDoor:
    slot: str  # X-Bluegreen-Slot, "" when no answer
    version: str  # X-App-Version
    status: int


def front_door(rig: Rig) -> FrontDoor:
    """What a client sees right now: who answers the front door."""
    try:
        r = requests.get(rig.nginx.url("/"), timeout=5)
    except requests.RequestException:
        return FrontDoor("", "", 0)
    return FrontDoor(r.headers.get("X-Bluegreen-Slot", ""), r.headers.get("X-App-Version", ""),
                     r.status_code)


def slot_answers(port: int) -> bool:
    """The slot's own health endpoint, asked directly (not through nginx or bluegreen)."""
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def status_json(rig: Rig) -> tuple[int, dict[str, Any], Ran]:
    ran = rig.fab("status", "--json")
    try:
        data = json.loads(ran.stdout)
    except ValueError:
        data = {}
    return ran.returncode, data, ran


def check_status_is_true(rig: Rig, *, expect_version: str | None = None) -> dict[str, Any]:
    """(b): everything `fab status --json` says is checked against the front door and the
    slots' ports; returns the status."""
    before = {slot: slot_answers(port) for slot, port in rig.slot_ports.items()}
    rc, st, ran = status_json(rig)
    where = f"\n--- fab status ---\n{ran.stdout}\n{ran.stderr}"
    door = front_door(rig)
    assert door.status == 200 and door.slot in ("blue", "green"), f"front door: {door}{where}"
    if expect_version is not None:
        assert door.version == expect_version, f"front door serves {door}{where}"
    assert st.get("live") == door.slot, f"status says live {st.get('live')}, front door " \
        f"answers from {door.slot}{where}"
    for label, t in st["traffic_hosts"].items():
        assert t.get("routes_to") == door.slot, f"{label}: routes_to {t}{where}"
        assert t.get("file_says") == door.slot, f"{label}: file_says {t}{where}"
    assert st["slots"][door.slot]["version"] == door.version, \
        f"status says {door.slot} holds {st['slots'][door.slot]['version']}, the front door " \
        f"serves {door.version}{where}"
    assert st.get("pending_switch") is None, f"a switch is still pending{where}"
    healthy = {}
    for label, view in st["app_hosts"].items():
        assert "unknown" not in view, f"{label}: {view}{where}"
        for slot, port in rig.slot_ports.items():
            answers = slot_answers(port)
            healthy[slot] = answers
            if answers != before[slot]:
                continue  # a slot still booting while status looked: either view is true
            assert view[slot]["healthy"] == answers, \
                f"status says {slot} healthy={view[slot]['healthy']} on {label}, its port " \
                f"answers={answers} (before and after status){where}"
            if not view[slot]["running"]:
                assert not answers, f"status says {slot} is not running, it answers{where}"
    expected_rc = 0 if healthy[door.slot] else 4
    assert st["consistent"] is True, f"not consistent{where}"
    assert rc == expected_rc == st["exit_code"], f"exit {rc}, expected {expected_rc}{where}"
    return st


# ------------------------------------------------------------------------------ load


@contextlib.contextmanager
def under_load(rig: Rig) -> Iterator[LoadGen]:
    gen = LoadGen(rig.nginx.url("/").rstrip("/"), mix=LOAD_MIX, slow_seconds=0.5,
                  max_duration=170.0, label=rig.mode)
    gen.start()
    try:
        yield gen
    finally:
        gen.stop()


def judge_load(rig: Rig, result: LoadResult, versions: set[str]) -> int:
    """(a): the front door was served by a healthy slot the whole time. Returns the number
    of keep-alive requests a reload dropped (always 0 in lua mode)."""
    assert result.total > 0, "the load client sent nothing"
    failures = result.failures()
    excused = [r for r in failures if rig.mode == "reload" and r.cls != "fresh_get"
               and r.status == 0 and r.error in KEEPALIVE_DROPS]
    real = [r for r in failures if r not in excused]
    kinds: dict[str, int] = {}
    for r in real:
        kinds[f"{r.cls}:{r.error}"] = kinds.get(f"{r.cls}:{r.error}", 0) + 1
    assert not real, f"{len(real)} of {result.total} requests failed through the front " \
        f"door ({rig.mode} mode): {kinds}"
    served = {r.version for r in result.records if r.ok}
    assert served <= versions, f"served versions {served}, expected only {versions}"
    rig.notes["requests"] = result.total
    rig.notes["reload_drops"] = len(excused)
    return len(excused)


# ------------------------------------------------------------------------------ helpers


def failpoint_env(point: str, action: str) -> dict[str, str]:
    return {FAILPOINTS: f"{point}={action}"}


def no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.stderr + ran.stdout, \
        f"a traceback:\n{ran.stdout}\n{ran.stderr}"


@contextlib.contextmanager
def held_at(rig: Rig, version: str, point: str, hold_file: Path,
            env: dict[str, str] | None = None, args: tuple[str, ...] = ()
            ) -> Iterator[subprocess.Popen[str]]:
    """Run `fab deploy VERSION [ARGS...]` held at `point` (failpoint `hold`); yields the
    running process once it is there. Removing `hold_file` lets it go on; leaving the block waits
    for it (bounded) and kills it by PID if it does not end."""
    from testkit.project import clean_env, fab_path

    proj = rig.project
    extra = {**proj.env, **(env or {}),
             FAILPOINTS: f"{point}=hold:{hold_file}", "PYTHONUNBUFFERED": "1"}
    out = open(proj.dir / f"held-{version}.out", "w+")
    proc = subprocess.Popen([fab_path(), "deploy", "--artifact", str(proj.artifacts[version]),
                             "--version", version, *args], cwd=proj.dir, env=clean_env(extra),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not hold_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out.seek(0)
                raise AssertionError(f"fab deploy never reached {point} "
                                     f"(rc={proc.poll()}):\n{out.read()}")
            time.sleep(0.02)
        yield proc
    finally:
        with contextlib.suppress(FileNotFoundError):
            hold_file.unlink()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        out.seek(0)
        proc.output = out.read()  # type: ignore[attr-defined]
        out.close()


def pid_of(hold_file: Path) -> int:
    return int(hold_file.read_text().split()[0])


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True, timeout=30)


def umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0:
            return


def can_mount_tmpfs(probe: Path) -> str:
    """"" when a tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        mount_tmpfs(probe, 1)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot mount a tmpfs: {exc}"
    umount(probe)
    return ""


# ------------------------------------------------------------------------------ cells


def params(cells: list[Cell]) -> list[object]:
    """pytest params: `faults_full` unless representative; known defects marked xfail."""
    out = []
    for c in cells:
        marks: list[Any] = [] if c.id in REPRESENTATIVE else [pytest.mark.faults_full]
        if c.id in KNOWN:
            reason, strict = KNOWN[c.id]
            marks.append(pytest.mark.xfail(strict=strict, reason=reason))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def reached(ran: object, cell: Cell) -> None:
    """The fault happened where the cell says (a misspelt point would pass silently)."""
    err = getattr(ran, "stderr", "")
    assert f"failpoint {cell.point}: {cell.fault}" in err, \
        f"the failpoint {cell.point} was not reached:\n{getattr(ran, 'stdout', '')}\n{err}"


def converges(rig: Rig, first: str) -> None:
    """(c): the next plain deploy succeeds, with no manual step, and serves v3."""
    ran = rig.deploy("v3")
    assert ran.returncode == 0, f"the next plain `fab deploy` failed after {first}:\n" \
        f"{ran.stdout}\n{ran.stderr}"
    check_status_is_true(rig, expect_version="v3")
