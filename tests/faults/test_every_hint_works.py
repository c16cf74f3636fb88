"""Every hint works: each message in bluegreen/ that tells the user to run a command is
reached here with real parts (nginx, sshd, the demo app), the printed command is run in
that very situation, and the test asserts it succeeds and converges (the front door and
`fab status` agree, and the next plain deploy works).

HINTS below is the table: each hint that names a command, where it is, what it tells the
user to run, and the test that runs it (test_the_table_lists_every_hint_that_names_a_command
keeps the table complete as hints are added). Hints that name no command (raise
health.timeout, fix the template, check the nginx error log, ...) are not in it.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from testkit.haproxy import HaproxyProject, PrivateHaproxy
from testkit.nginx import PrivateNginx
from testkit.procs import pid_alive
from testkit.sshd import TestSshd
from tests.faults.faultkit import (
    Cell,
    Rig,
    check_status_is_true,
    failpoint_env,
    front_door,
    held_at,
    no_traceback,
    pid_of,
    status_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@dataclass(frozen=True)
class Hint:
    file: str  # under bluegreen/
    needle: str  # a piece of the hint's source text
    command: str  # what it tells the user to run
    test: str  # the test that runs it here, or "unreachable: why"


HINTS: tuple[Hint, ...] = (
    Hint("lock.py", "--lock-wait SECONDS", "re-run with --lock-wait SECONDS",
         "test_lock_held_by_a_live_run_re_run_with_lock_wait"),
    Hint("lock.py", "if it is dead, run `fab unlock`", "fab unlock",
         "test_lock_of_a_dead_run_on_another_machine_fab_unlock"),
    Hint("lock.py", "run `fab unlock` once the host is reachable", "fab unlock",
         "test_lock_left_on_a_host_that_went_down_fab_unlock"),
    Hint("views.py", "`fab unlock` if that run is dead", "fab unlock",
         "test_status_shows_the_lock_of_a_killed_run_fab_unlock"),
    Hint("views.py", "the next deploy, switch", "the next deploy, switch or rollback",
         "test_status_shows_a_pending_switch_the_next_command_restores_it"),
    Hint("lock.py", "`fab status`, then re-run", "fab status; re-run",
         "test_a_run_whose_lock_was_broken_fab_status_then_re_run"),
    Hint("runner.py", "Re-run the same command", "the same command again",
         "test_interrupted_re_run_the_same_command"),
    Hint("phases.py", "run `fab switch --to ", "fab switch --to SLOT",
         "test_nginx_changed_by_hand_fab_switch_to_converges"),
    Hint("phases.py", "run `fab deploy` first", "fab deploy (nothing live yet)",
         "test_switch_before_any_deploy_fab_deploy_first"),
    Hint("phases.py", "run `fab deploy` first", "fab deploy (slot never deployed)",
         "test_switch_to_a_slot_never_deployed_fab_deploy_first"),
    Hint("canary.py", "run `fab deploy` first", "fab deploy (a canary before any deploy)",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_canary_before_any_deploy_says_deploy_first_and_that_converges (fake hosts)"),
    Hint("canary.py", "fix the build and `fab deploy` again", "fab deploy (a fixed build)",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_canary_that_fails_its_gate_goes_back_to_zero_and_is_marked_bad (fake hosts)"),
    Hint("phases.py", "`fab deploy` again, or `fab rollback`", "fab deploy / fab rollback",
         "test_switch_to_an_unfinished_slot_fab_deploy_again_or_fab_rollback"),
    Hint("phases.py", "`fab rollback` restarts the previous", "fab rollback / fab deploy",
         "test_switch_to_a_crashed_slot_fab_rollback_or_fab_deploy"),
    Hint("phases.py", "`fab status` shows the history", "fab status",
         "test_rollback_without_a_previous_release_fab_status"),
    Hint("phases.py", "deploy that version again", "fab deploy (that version)",
         "test_rollback_to_a_release_removed_from_the_host_fab_deploy_it_again"),
    Hint("phases.py", "`fab switch` or `fab deploy` again", "fab switch / fab deploy",
         "test_rejected_template_fix_then_fab_switch_or_fab_deploy_again"),
    Hint("routers/nginx.py", "and re-run", "re-run (once the template is fixed)",
         "test_rejected_template_fix_then_fab_switch_or_fab_deploy_again"),
    Hint("phases.py", "use --to blue or --to green", "fab switch --to blue|green",
         "test_switch_to_an_unknown_slot_use_to_blue_or_green"),
    Hint("hosts/ssh.py", "check the network to the host, then re-run", "re-run",
         "test_ssh_connection_lost_re_run_converges"),
    Hint("hosts/ssh.py", "check the connection, then re-run", "re-run",
         "test_ssh_connection_lost_re_run_converges"),
    Hint("hosts/ssh.py", "wait until the host answers again, then re-run", "re-run",
         "test_ssh_connection_lost_re_run_converges"),
    Hint("hosts/ssh.py", "check disk space and the connection", "re-run",
         "test_upload_cut_mid_file_re_run_converges"),
    Hint("hosts/ssh.py", "verify the host's fingerprint, then: ssh-keyscan",
         "ssh-keyscan -p PORT ADDR >> KNOWN_HOSTS",
         "test_unknown_host_key_ssh_keyscan_as_printed_then_deploy"),
    Hint("hosts/ssh.py", "verify its fingerprint, then: ssh-keyscan",
         "ssh-keyscan -p PORT ADDR >> KNOWN_HOSTS",
         "test_unknown_host_key_ssh_keyscan_as_printed_then_deploy"),
    Hint("hooks.py", "chmod +x", "chmod +x PATH", "test_hook_not_executable_chmod_as_printed"),
    Hint("slots.py", "stop that process", "stop it, re-run",
         "test_foreign_process_on_the_idle_port_stop_it_then_re_run"),
    Hint("state.py", "`fab history` what was deployed: restore",
         "fab status; fab history; restore state.json; re-run",
         "test_corrupt_state_fab_status_and_fab_history_then_restore_and_re_run"),
    Hint("journal.py", "check `fab status`, then remove", "fab status; rm; fab switch --to",
         "test_unreadable_journal_fab_status_shows_the_truth"),
    Hint("journal.py", "and run `fab switch --to", "rm JOURNAL; fab switch --to SLOT",
         "test_unreadable_journal_remove_it_then_fab_switch_to"),
    Hint("binder.py", "as one line of text", "--version V (one line)",
         "test_version_with_a_line_break_pass_it_as_one_line"),
    Hint("binder.py", "pass --config PATH", "--config PATH",
         "test_no_config_file_pass_config_path"),
    Hint("config.py", "pass --config PATH or set BLUEGREEN_CONFIG", "--config PATH",
         "test_no_config_file_pass_config_path"),
    Hint("state.py", "from that (or a backup) by hand, then re-run",
         "restore state.json; re-run",
         "test_corrupt_state_fab_status_and_fab_history_then_restore_and_re_run"),
    Hint("errors.py", "again with a valid value", "the flag again, valid",
         "test_bad_since_pass_it_again"),
    Hint("process.py", "journalctl -u", "journalctl -u UNIT",
         "elsewhere: tests/integration/test_systemd_backend.py "
         "test_a_start_that_systemd_refuses_journalctl_as_printed_says_why"),
    Hint("process.py", "create it there (useradd --system ", "useradd --system USER",
         "elsewhere: tests/integration/test_systemd_backend.py "
         "test_app_user_or_group_missing_on_the_host_the_printed_command_fixes_it"),
    Hint("process.py", "create it there (groupadd --system ", "groupadd --system GROUP",
         "elsewhere: tests/integration/test_systemd_backend.py "
         "test_app_user_or_group_missing_on_the_host_the_printed_command_fixes_it"),
    Hint("process.py", "link it once: ln -s ", "ln -s UNIT /etc/systemd/system/",
         "elsewhere: tests/integration/test_systemd_backend.py "
         "test_forgotten_unit_link_names_the_link_and_the_printed_command_fixes_it"),
    Hint("phases.py", "fix the build and `fab deploy` again", "fab deploy --force / a fixed build",
         "elsewhere: tests/unit/flows/test_flows.py "
         "test_a_build_whose_pages_fail_is_reverted_by_the_watch_and_marked_bad (fake hosts)"),
    Hint("phases.py", "resume it with the same artifact", "fab deploy --batch ... (resume)",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_rolling_deploy_switches_back_keeps_partial_and_resumes"),
    Hint("phases.py", "or put every host back: `fab switch --to", "fab switch --to OLD",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_partial_rollout_refused_then_put_back_by_the_printed_switch"),
    Hint("phases.py", "this was the first deploy", "fab deploy (a fixed build)",
         "test_a_watch_breach_on_the_first_deploy_fix_the_build_and_deploy_again"),
    Hint("phases.py", "rollback never goes back to a bad release", "fab deploy [--force]",
         "test_rollback_refused_its_target_was_auto_reverted_fab_deploy"),
    Hint("batches.py", "it resumes, retrying only them", "the same command / fab switch --to",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_rolling_deploy_switches_back_keeps_partial_and_resumes"),
    Hint("batches.py", "a switch was interrupted or nginx was changed by hand",
         "fab switch --to SLOT", "elsewhere: tests/integration/test_fleet_batches.py "
         "test_rolling_deploy_finds_a_host_flipped_by_hand_and_the_printed_switch_converges"),
    Hint("batches.py", "fix the failed hosts and run the same command again",
         "the same command / fab switch --to",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_keep_partial_status_shows_it_and_the_same_command_resumes"),
    Hint("batches.py", "state still records the partial rollout", "fab switch --to",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_switch_back_that_fails_then_the_printed_switch_puts_every_host_back"),
    Hint("views.py", "resume with the same `fab deploy --batch`", "fab deploy --batch",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_keep_partial_status_shows_it_and_the_same_command_resumes"),
    Hint("batches.py", "the kept hosts serve the bad release", "fab switch --to OLD",
         "elsewhere: tests/integration/test_fleet_batches.py "
         "test_a_breach_in_a_later_batch_switches_the_earlier_batches_back_too[keep-partial]"),
    Hint("preflight.py", "; then re-run", "add the sudo rule; re-run",
         "test_a_missing_sudo_rule_add_the_printed_line_then_re_run"),
    Hint("preflight.py", "; then re-run when they answer", "re-run",
         "test_a_host_that_cannot_be_reached_re_run_when_it_answers"),
    Hint("release.py", "apt-get install unzip", "install unzip; re-run",
         "test_no_unzip_on_the_app_host_install_it_then_re_run"),
    Hint("release.py", "keep_releases bounds how many stay", "free space; re-run",
         "test_the_disk_check_refuses_free_space_then_re_run"),
    Hint("release.py", ", `fab releases`), then re-run", "free space; re-run",
         "test_a_disk_filled_during_the_unpack_free_space_then_re_run"),
    Hint("routers/haproxy.py", "`fab status` shows what haproxy routes to", "fab status",
         "test_haproxy_verify_failure_fab_status_shows_what_it_routes_to"),
    Hint("routers/haproxy.py", "`fab switch --abort` ends a canary", "fab switch --abort",
         "untested: haproxy applied another canary share than asked, then --abort"),
    Hint("routers/haproxy.py", "(`fab status` says what it can see)", "fab status",
         "test_haproxy_admin_socket_unreachable_fab_status_says_what_it_can_see"),
    Hint("routers/haproxy.py", ") and re-run", "fix; re-run",
         "test_haproxy_rejects_the_config_fix_it_and_re_run"),
    Hint("routers/nginx.py", "its next `fab` command recovers it", "fix it; re-run",
         "test_another_apps_broken_file_fixed_then_re_run"),
    Hint("deploy.py", "; `fab promote` switches to it", "fab promote",
         "elsewhere: tests/integration/test_after_switch.py "
         "test_a_preview_reaches_the_ready_slot_while_users_stay_on_the_live_one"),
    Hint("deploy.py", "s; `fab promote` finishes it, `fab switch --abort` ends it",
         "fab promote / fab switch --abort",
         "elsewhere: tests/unit/flows/test_after_flows.py test_promote_finishes_a_canary "
         "(fake hosts)"),
    Hint("deploy.py", " waits for `fab promote`", "fab promote",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_no_switch_without_a_preview_token_just_waits (fake hosts)"),
    Hint("deploy.py", "s; `fab promote` finishes the canary, `fab switch --abort` ends it",
         "fab promote / fab switch --abort",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_walk_that_ends_below_100_leaves_the_canary_for_promote "
         "(fake hosts)"),
    Hint("canary.py", "run `fab switch --abort` now", "fab switch --abort",
         "test_a_canary_whose_revert_failed_fab_switch_abort"),
    Hint("phases.py", "`fab promote` to finish the canary, or `fab switch --abort`",
         "fab promote / fab switch --abort",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_deploy_and_rollback_are_refused_while_a_canary_runs (fake hosts)"),
    Hint("phases.py", "`fab deploy --no-switch` prepares a release", "fab deploy --no-switch",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_promote_with_nothing_ready_says_what_to_do (fake hosts)"),
    Hint("canary.py", "without it the deploy ends with the canary running", "fab promote",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_walk_that_ends_below_100_leaves_the_canary_for_promote "
         "(fake hosts)"),
    Hint("phases.py", "a weight change was cut off: `fab switch --weight ",
         "fab switch --weight N / --abort",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_share_nginx_lost_is_an_inconsistency_with_the_way_out "
         "(fake hosts)"),
    Hint("phases.py", "` sets it again, `fab switch --abort` ends the canary",
         "fab switch --weight N / --abort",
         "elsewhere: tests/unit/flows/test_after_flows.py "
         "test_a_share_nginx_lost_is_an_inconsistency_with_the_way_out "
         "(fake hosts)"),
    Hint("routers/nginx_reload.py", "run `fab switch --to <the live slot>` once",
         "fab switch --to LIVE",
         "test_maintenance_on_an_older_rendered_file_fab_switch_to_the_live_slot"),
    Hint("views.py", " - `fab promote` finishes it, `fab switch --abort` ends it",
         "fab promote / fab switch --abort",
         "elsewhere: tests/integration/test_after_switch.py "
         "test_switch_weight_assigns_a_cohort_to_new_users_and_abort_returns_everyone"),
    Hint("views.py", " waits for `fab promote`", "fab promote",
         "elsewhere: tests/integration/test_after_switch.py "
         "test_a_preview_reaches_the_ready_slot_while_users_stay_on_the_live_one"),
    Hint("views.py", " - `fab maintenance off` ends it", "fab maintenance off",
         "elsewhere: tests/integration/test_after_switch.py "
         "test_maintenance_answers_503_with_the_message_and_leaves_the_slots_alone"),
    Hint("views.py", "(nginx restarted?): run `fab maintenance ", "fab maintenance on|off",
         "test_maintenance_lost_by_an_nginx_restart_fab_maintenance_on_again"),
    Hint("deploy.py", "`fab switch` / `fab rollback`", "fab switch / fab rollback",
         "elsewhere: tests/integration/test_deploy_flows.py test_switch_back_and_forth and "
         "test_rollback_returns_to_previous_release"),
)
# Strings that mention a command without telling the user to run it
NOT_HINTS: tuple[tuple[str, str], ...] = (
    ("binder.py", "the history and `fab status` as one line"),
    ("deploy.py", "slot kept warm for `fab rollback`"),  # the end-of-run summary
    ("deploy.py", "--no-switch prepares a release for `fab promote`"),  # a flow's description
    ("tasks.py", "`fab promote` switches to it later"),  # a flag's --help
    ("routers/nginx_reload.py", "# Written by `fab maintenance on`"),  # a comment in a file
    ("cli.py", "(= `fab history`)"),  # what a command is, in its --help
    ("cli.py", "--lock-wait"),  # the flag's own name
)
COMMANDISH = re.compile(r"`fab [a-z]|re-run|Re-run|ssh-keyscan|chmod \+x|journalctl|--lock-wait|"
                        r"--config PATH|--to blue|again with|one line of text|the next deploy")
CORE = Path(__file__).resolve().parents[2] / "bluegreen"


def _strings(path: Path) -> list[str]:
    """The string constants of a module (f-string parts too), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_table_lists_every_hint_that_names_a_command() -> None:
    """Every string in the core that tells the user to run something is in HINTS (or
    NOT_HINTS), every row still matches a string, and every row names a test that exists."""
    files = sorted(p for p in CORE.rglob("*.py")
                   if "automation" not in p.parts and p.name != "testing.py")
    missing, stale = [], []
    for path in files:
        rel = str(path.relative_to(CORE))
        strings = _strings(path)
        needles = [h.needle for h in HINTS if h.file == rel] + \
            [n for f, n in NOT_HINTS if f == rel]
        missing += [f"{rel}: {text!r}" for text in strings if COMMANDISH.search(text)
                    and not any(n in text for n in needles)]
        stale += [f"{rel}: {n!r}" for n in needles if not any(n in t for t in strings)]
    assert not missing, "hints that name a command but are not in HINTS (add a row and " \
        "a test that runs the command):\n  " + "\n  ".join(missing)
    assert not stale, "rows whose text is no longer in the code:\n  " + "\n  ".join(stale)
    here = globals()
    for h in HINTS:
        assert h.test.startswith(("unreachable:", "elsewhere:", "untested:")) \
            or h.test in here, h


def test_the_hints_not_yet_run_are_listed_in_the_readme() -> None:
    """A hint whose command no test runs yet is said plainly where users read."""
    readme = (CORE.parent / "README.md").read_text()
    for h in HINTS:
        if h.test.startswith("untested:"):
            assert h.test.removeprefix("untested: ") in readme, h


# The hint tests plain pytest (`make test`) runs; the others only under `make faults`
FAST = frozenset({"lock-broken-under-a-run", "status-locked", "corrupt-state",
                  "unreadable-journal", "unreadable-journal-remove", "version-one-line"})
FULL = pytest.mark.faults_full


def cells(name: str, *where: tuple[str, str]) -> list[object]:
    """A hint test's worlds: (mode, host) pairs; reload/local when none given."""
    return [pytest.param(Cell("hint", name, m, h), id=f"{m}-{h}",
                         marks=() if name in FAST else (FULL,))
            for m, h in (where or (("reload", "local"),))]


def ok(ran: object, what: str = "") -> None:
    rc = getattr(ran, "returncode", None)
    assert rc == 0, f"{what or 'the printed command'} failed ({rc}):\n" \
        f"{getattr(ran, 'stdout', '')}\n{getattr(ran, 'stderr', '')}"


def refused(ran: object, *needles: str, rc: int | None = None) -> str:
    text = getattr(ran, "stdout", "") + getattr(ran, "stderr", "")
    assert getattr(ran, "returncode", 0) != 0, f"expected a refusal:\n{text}"
    if rc is not None:
        assert getattr(ran, "returncode", None) == rc, text
    for n in needles:
        assert n in text, f"{n!r} not in:\n{text}"
    assert "Traceback" not in text, text
    return text


def command_in(text: str) -> list[str]:
    """The `fab ...` commands a message prints between backticks, as argv lists."""
    return [cmd.split() for cmd in re.findall(r"`(fab [^`]+)`", text)]


def run_printed(rig: Rig, text: str, index: int = 0) -> object:
    """Run the `fab ...` command the message printed (the user's next step), verbatim."""
    argv = command_in(text)
    assert argv, f"no `fab ...` command in:\n{text}"
    assert argv[index][0] == "fab"
    return rig.fab(*argv[index][1:])


def converged(rig: Rig, version: str) -> None:
    """The front door serves `version`, status agrees (exit 0), the next deploy works."""
    check_status_is_true(rig, expect_version=version)
    ok(rig.deploy("v3" if version != "v3" else "v2"), "the next plain deploy")
    check_status_is_true(rig, expect_version="v3" if version != "v3" else "v2")


SLOTS_OF = {"v1": "blue", "v2": "green"}


# ------------------------------------------------------------------------------ the lock


@pytest.mark.parametrize("cell", cells("lock-wait"))
def test_lock_held_by_a_live_run_re_run_with_lock_wait(cell: Cell, rig: Rig,
                                                       tmp_path: Path) -> None:
    ok(rig.deploy("v1"))
    hold = tmp_path / "hold"
    with held_at(rig, "v2", "before:upload", hold) as first:
        text = refused(rig.deploy("v3"), "another deploy holds the lock", "--lock-wait",
                       rc=3)
        assert "re-run with --lock-wait SECONDS" in text
        waiting = subprocess.Popen(
            [*_fab_argv(rig), "deploy", "--artifact", str(rig.project.artifacts["v3"]),
             "--version", "v3", "--lock-wait", "60"], cwd=rig.project.dir,
            env=_env(rig), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        assert waiting.poll() is None, "--lock-wait did not wait"
        hold.unlink()
        out, _ = waiting.communicate(timeout=120)
    assert first.returncode == 0, first.output  # type: ignore[attr-defined]
    assert waiting.returncode == 0, out
    check_status_is_true(rig, expect_version="v3")


@pytest.mark.parametrize("cell", cells("unlock-dead-elsewhere"))
def test_lock_of_a_dead_run_on_another_machine_fab_unlock(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    lock = rig.project.app_root / "lock"
    lock.mkdir()
    now = time.time()
    (lock / "owner.json").write_text(json.dumps({
        "who": "ci-agent-3", "action": "deploy", "token": "t", "started_at": now - 30,
        "machine": "agent-3.example", "pid": 4242, "build_url": "", "heartbeat": now - 5}))
    text = refused(rig.deploy("v2"), "ci-agent-3", rc=3)
    assert "if it is dead, run `fab unlock`" in text
    ok(run_printed(rig, text))
    ok(rig.deploy("v2"))
    check_status_is_true(rig, expect_version="v2")


@pytest.mark.parametrize("cell", cells("unlock-after-host-down", ("reload", "ssh")))
def test_lock_left_on_a_host_that_went_down_fab_unlock(cell: Cell, rig: Rig,
                                                       tmp_path: Path) -> None:
    assert rig.sshd is not None
    ok(rig.deploy("v1"))
    hold = tmp_path / "hold"
    with held_at(rig, "v2", "before:stop", hold) as proc:
        rig.sshd.stop()
        hold.unlink()
        proc.wait(timeout=120)
    out = proc.output  # type: ignore[attr-defined]
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "could not release the deploy lock" in out and "run `fab unlock` once the host " \
        "is reachable" in out, out
    rig.sshd.start()
    ok(run_printed(rig, out[out.index("could not release"):]), "fab unlock")
    ok(rig.deploy("v2"))
    check_status_is_true(rig, expect_version="v2")


@pytest.mark.parametrize("cell", cells("status-locked"))
def test_status_shows_the_lock_of_a_killed_run_fab_unlock(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    killed = rig.deploy("v2", env=failpoint_env("before:stop", "kill"))
    assert killed.returncode == -signal.SIGKILL
    shown = rig.fab("status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "LOCKED by" in shown.stdout and "`fab unlock` if that run is dead" in shown.stdout
    ok(run_printed(rig, shown.stdout[shown.stdout.index("LOCKED by"):]), "fab unlock")
    ok(rig.deploy("v3"))
    check_status_is_true(rig, expect_version="v3")


@pytest.mark.parametrize("cell", cells("status-pending", ("reload", "local"), ("lua", "ssh")))
@pytest.mark.parametrize("next_command", ["deploy", "switch"])
def test_status_shows_a_pending_switch_the_next_command_restores_it(
        cell: Cell, rig: Rig, tmp_path: Path, next_command: str) -> None:
    ok(rig.deploy("v1"))
    hold = tmp_path / "hold"
    with held_at(rig, "v2", "switch.after-install", hold) as proc:
        shown = rig.fab("status")  # a live run holds the lock: status only shows it
        assert shown.returncode == 5, shown.stdout + shown.stderr
        assert "PENDING: interrupted deploy" in shown.stdout
        assert "the next deploy, switch or rollback restores the committed state first" \
            in shown.stdout
        os.kill(pid_of(hold), signal.SIGKILL)  # the run holding it dies (we started it)
        proc.wait(timeout=30)
    if next_command == "deploy":
        ran = rig.deploy("v3")
        ok(ran, "the next deploy")
        assert "recovered interrupted deploy" in ran.stdout
        check_status_is_true(rig, expect_version="v3")
    else:
        ran = rig.fab("switch")  # green holds v2, whose deploy never finished
        assert "recovered interrupted deploy" in ran.stdout, ran.stdout + ran.stderr
        assert "did not finish" in ran.stderr and "Traceback" not in ran.stderr
        converged(rig, "v1")


@pytest.mark.parametrize("cell", cells("lock-broken-under-a-run"))
def test_a_run_whose_lock_was_broken_fab_status_then_re_run(cell: Cell, rig: Rig,
                                                            tmp_path: Path) -> None:
    ok(rig.deploy("v1"))
    hold = tmp_path / "hold"
    with held_at(rig, "v2", "before:switch", hold) as proc:
        ok(rig.fab("unlock"), "fab unlock")
        hold.unlink()
        proc.wait(timeout=60)
    out = proc.output  # type: ignore[attr-defined]
    assert proc.returncode == 3 and "lock was broken while this run held it" in out, out
    assert "check `fab status`, then re-run" in out
    check_status_is_true(rig, expect_version="v1")  # `fab status`: the truth, exit 0
    ok(rig.deploy("v2"), "the re-run")
    check_status_is_true(rig, expect_version="v2")


# ------------------------------------------------------------------------------ interrupts


@pytest.mark.parametrize("cell", cells("interrupted", ("reload", "local"), ("lua", "ssh")))
@pytest.mark.parametrize("point", ["health.probing", "switch.after-install",
                                   "switch.after-apply"])
def test_interrupted_re_run_the_same_command(cell: Cell, rig: Rig, point: str) -> None:
    ok(rig.deploy("v1"))
    ran = rig.deploy("v2", env=failpoint_env(point, "term"))
    assert ran.returncode == 130 and "Re-run the same command" in ran.stderr, ran.stderr
    check_status_is_true(rig, expect_version="v1")
    ok(rig.deploy("v2"), "the same command again")
    check_status_is_true(rig, expect_version="v2")
    ran = rig.fab("switch", env=failpoint_env(point if point != "health.probing"
                                              else "before:switch", "term"))
    assert ran.returncode == 130 and "Re-run the same command" in ran.stderr, ran.stderr
    check_status_is_true(rig, expect_version="v2")
    ok(rig.fab("switch"), "the same command again")
    check_status_is_true(rig, expect_version="v1")


# ------------------------------------------------------------------------------ consistency


def _by_hand_old_config(rig: Rig, saved: str) -> None:
    """An operator puts the previous nginx file back and reloads (reload mode)."""
    (rig.nginx.conf_dir / "demo.conf").write_text(saved)
    rig.nginx.reload()


def _by_hand_flip(rig: Rig, slot: str) -> None:
    """An operator flips the live port through the lua control endpoint."""
    port = rig.slot_ports[slot]
    r = requests.post(f"http://127.0.0.1:{rig.project.control_port}/bluegreen/live?port={port}",
                      timeout=5)
    assert r.status_code == 200, r.text


def _by_hand_remove(rig: Rig) -> None:
    """An operator removes bluegreen's nginx file and reloads."""
    (rig.nginx.conf_dir / "demo.conf").unlink()
    rig.nginx.reload()


@pytest.mark.parametrize(("cell", "how"), [
    # in lua mode the zone, not the file, routes: an operator flips it through the
    # control endpoint; in reload mode the file is what nginx loads
    pytest.param(Cell("hint", "consistency", "reload", "local"), "old-file-back",
                 id="reload-local-old-file-back"),
    pytest.param(Cell("hint", "consistency", "reload", "local"), "file-removed",
                 id="reload-local-file-removed", marks=FULL),
    pytest.param(Cell("hint", "consistency", "lua", "ssh"), "file-removed",
                 id="lua-ssh-file-removed", marks=FULL),
    pytest.param(Cell("hint", "consistency", "lua", "ssh"), "lua-flipped",
                 id="lua-ssh-lua-flipped"),
])
def test_nginx_changed_by_hand_fab_switch_to_converges(cell: Cell, rig: Rig, how: str) -> None:
    ok(rig.deploy("v1"))
    saved = (rig.nginx.conf_dir / "demo.conf").read_text()
    ok(rig.deploy("v2"))  # green live, v1 warm in blue
    if how == "old-file-back":
        _by_hand_old_config(rig, saved)
    elif how == "lua-flipped":
        _by_hand_flip(rig, "blue")
    else:
        _by_hand_remove(rig)
    text = refused(rig.deploy("v3"), "state says live slot is green but nginx", rc=1)
    assert "to converge" in text
    cmd = command_in(text)[0]
    ok(rig.fab(*cmd[1:]), " ".join(cmd))
    served = "v2" if how == "file-removed" else "v1"
    converged(rig, served)


# ------------------------------------------------------------------------------ switch, rollback


@pytest.mark.parametrize("cell", cells("nothing-live"))
def test_switch_before_any_deploy_fab_deploy_first(cell: Cell, rig: Rig) -> None:
    text = refused(rig.fab("switch"), "nothing is live yet", "run `fab deploy` first")
    ok(rig.deploy("v1"), "fab deploy")
    check_status_is_true(rig, expect_version="v1")
    assert text


@pytest.mark.parametrize("cell", cells("never-deployed-slot"))
def test_switch_to_a_slot_never_deployed_fab_deploy_first(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    refused(rig.fab("switch", "--to", "green"), "slot green has never held a release",
            "run `fab deploy` first")
    ok(rig.deploy("v2"), "fab deploy")
    check_status_is_true(rig, expect_version="v2")


def _veto(rig: Rig) -> Path:
    hooks = rig.project.dir / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / "pre-switch"
    hook.write_text("#!/bin/sh\necho 'smoke test failed' >&2\nexit 1\n")
    hook.chmod(0o755)
    return hook


@pytest.mark.parametrize("cell", cells("unfinished-slot", ("reload", "local"), ("lua", "ssh")))
def test_switch_to_an_unfinished_slot_fab_deploy_again_or_fab_rollback(cell: Cell,
                                                                        rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))  # green live, v1 warm in blue
    hook = _veto(rig)
    refused(rig.deploy("v3"), "hook pre-switch failed")  # v3 healthy in blue, vetoed
    hook.unlink()
    text = refused(rig.fab("switch"), "whose deploy did not finish",
                   "`fab deploy` again, or `fab rollback`")
    ok(rig.deploy("v3"), "`fab deploy` again")
    check_status_is_true(rig, expect_version="v3")
    # and the other way out: an unhealthy build leaves green failed; `fab rollback`
    refused(rig.deploy("v4-unhealthy"), "did not become healthy")
    text = refused(rig.fab("switch"), "whose deploy did not finish")
    assert "`fab rollback`" in text
    ok(rig.fab("rollback"), "fab rollback")
    check_status_is_true(rig, expect_version="v2")


def _slot_pid(rig: Rig, slot: str) -> int:
    return int((rig.project.app_root / "slots" / slot / "pid").read_text().split()[0])


@pytest.mark.parametrize("cell", cells("crashed-slot"))
@pytest.mark.parametrize("way_out", ["rollback", "deploy"])
def test_switch_to_a_crashed_slot_fab_rollback_or_fab_deploy(cell: Cell, rig: Rig,
                                                             way_out: str) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))  # green live, v1 warm in blue
    pid = _slot_pid(rig, "blue")
    os.killpg(pid, signal.SIGKILL)  # the warm app crashed (our own test app, by its pid)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = refused(rig.fab("switch"), "is not running on")
    assert "`fab rollback` restarts the previous release, or `fab deploy` ships a new one" \
        in text
    if way_out == "rollback":
        ok(rig.fab("rollback"), "fab rollback")
        check_status_is_true(rig, expect_version="v1")
    else:
        ok(rig.deploy("v3"), "fab deploy")
        check_status_is_true(rig, expect_version="v3")


@pytest.mark.parametrize("cell", cells("no-previous"))
def test_rollback_without_a_previous_release_fab_status(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    text = refused(rig.fab("rollback"), "no previous release", "`fab status`")
    shown = run_printed(rig, text)
    ok(shown, "fab status")
    assert "deploy" in shown.stdout and "v1" in shown.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize("cell", cells("release-gone"))
def test_rollback_to_a_release_removed_from_the_host_fab_deploy_it_again(cell: Cell,
                                                                         rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))
    refused(rig.deploy("v4-unhealthy"), "did not become healthy")  # reuses blue: cold
    for d in (rig.project.app_root / "releases").glob("v1-*"):
        shutil.rmtree(d)  # someone cleaned the disk by hand
    refused(rig.fab("rollback"), "is no longer on", "deploy that version again with "
            "`fab deploy`")
    ok(rig.deploy("v1"), "fab deploy (v1 again)")
    check_status_is_true(rig, expect_version="v1")


@pytest.mark.parametrize("cell", cells("rejected-template", ("reload", "local"),
                                       ("lua", "ssh")))
def test_rejected_template_fix_then_fab_switch_or_fab_deploy_again(cell: Cell,
                                                                   rig: Rig) -> None:
    from bluegreen.config import load
    from bluegreen.render import template_path  # the bundled template of this mode

    ok(rig.deploy("v1"))
    bundled = template_path(load(rig.project.dir / "bluegreen.toml"))
    (rig.project.dir / "broken.conf.j2").write_text(
        bundled.read_text() + "\nthis_is_not_an_nginx_directive on;\n")
    broken = ("--set", 'nginx.template="broken.conf.j2"')
    text = refused(rig.deploy("v2", *broken), "nginx -t rejected the rendered config")
    assert "re-run" in text and "`fab switch` or `fab deploy` again" in text
    check_status_is_true(rig, expect_version="v1")
    ok(rig.fab("switch"), "fab switch (template fixed)")  # v2 kept running idle in green
    check_status_is_true(rig, expect_version="v2")
    refused(rig.deploy("v3", *broken), "nginx -t rejected the rendered config")
    ok(rig.deploy("v3"), "fab deploy again (template fixed)")
    check_status_is_true(rig, expect_version="v3")


@pytest.mark.parametrize("cell", cells("bad-slot-name"))
def test_switch_to_an_unknown_slot_use_to_blue_or_green(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))
    refused(rig.fab("switch", "--to", "purple"), "--to must be blue or green",
            "use --to blue or --to green")
    ok(rig.fab("switch", "--to", "blue"), "fab switch --to blue")
    check_status_is_true(rig, expect_version="v1")


# ------------------------------------------------------------------------------ hosts


@pytest.mark.parametrize("cell", cells("ssh-lost", ("reload", "ssh"), ("lua", "ssh")))
@pytest.mark.parametrize("point", ["upload.mid", "before:stop"])
def test_ssh_connection_lost_re_run_converges(cell: Cell, rig: Rig, tmp_path: Path,
                                              point: str) -> None:
    """A link cut under the run (upload.mid), and a host gone for a while (its sshd
    stopped at before:stop, started again): both say `re-run: every phase converges`."""
    assert rig.sshd is not None
    ok(rig.deploy("v1"))
    if point == "upload.mid":
        ran = rig.deploy("v2", env=failpoint_env(point, "drop"))
        out = ran.stdout + ran.stderr
        assert ran.returncode == 1, out
    else:
        hold = tmp_path / "hold"
        with held_at(rig, "v2", point, hold) as proc:
            rig.sshd.stop()
            hold.unlink()
            proc.wait(timeout=120)
        out = proc.output  # type: ignore[attr-defined]
        assert proc.returncode == 1, out
        rig.sshd.start()
    assert "SSH connection lost" in out and "then re-run: every phase converges" in out, out
    assert "Traceback" not in out
    ok(rig.deploy("v2"), "the re-run")
    check_status_is_true(rig, expect_version="v2")


@pytest.mark.parametrize("cell", [pytest.param(Cell("hint", "upload-enospc", "reload", "ssh",
                                                    tmpfs=True), id="reload-ssh-tmpfs",
                                               marks=FULL)])
@pytest.mark.parametrize("fault", ["drop", "fill"])
def test_upload_cut_mid_file_re_run_converges(cell: Cell, rig: Rig, fault: str) -> None:
    """The SFTP write fails half-way through the file, after the disk check passed: the
    link cut (the generic upload hint), or the disk filled by something else meanwhile
    (said as a full disk). Either way the partial file goes and the re-run converges."""
    from bluegreen.failpoints import BALLAST

    ok(rig.deploy("v1"))
    srv = rig.project.srv
    action = "drop" if fault == "drop" else f"fill:{srv}"
    # a file of several SFTP blocks, so the cut lands inside it
    big = rig.project.dir / "big-v2.tar.gz"
    _pad_artifact(rig.project.artifacts["v2"], big, 600_000)
    ran = rig.fab("deploy", "--artifact", str(big), "--version", "v2",
                  env=failpoint_env("upload.writing", action))
    no_traceback(ran)
    if fault == "drop":
        refused(ran, "upload of", "failed", "check disk space and the connection, then re-run")
    else:
        refused(ran, "disk full on", "ran out of space", "the partial upload was removed",
                "then re-run")
        (srv / BALLAST).unlink()
    assert not list((srv / "demo" / "artifacts").glob(".upload-*")), "partial upload left"
    ok(rig.fab("deploy", "--artifact", str(big), "--version", "v2"), "the re-run")
    check_status_is_true(rig, expect_version="v2")


def _pad_artifact(source: Path, dest: Path, size: int) -> None:
    """The same release with an incompressible file added, so its tarball is `size` bytes
    or more (several 128 KiB SFTP writes)."""
    with tarfile.open(source) as src, tarfile.open(dest, "w:gz") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        pad = tarfile.TarInfo("padding.bin")
        data = os.urandom(size)
        pad.size = len(data)
        out.addfile(pad, io.BytesIO(data))


@pytest.mark.parametrize("cell", cells("host-key", ("reload", "ssh")))
def test_unknown_host_key_ssh_keyscan_as_printed_then_deploy(cell: Cell, rig: Rig,
                                                             tmp_path: Path) -> None:
    ok(rig.deploy("v1"))
    toml = rig.project.dir / "bluegreen.toml"
    assert rig.sshd is not None
    for known in (tmp_path / "missing_known_hosts", tmp_path / "empty_known_hosts"):
        if known.name.startswith("empty"):
            known.write_text("")
        toml.write_text(toml.read_text().replace(str(rig.sshd.known_hosts), str(known)))
        text = refused(rig.deploy("v2"), "ssh-keyscan")
        cmd = re.search(r"(ssh-keyscan -p \d+ \S+ >> \S+)", text)
        assert cmd, text
        subprocess.run(["bash", "-c", cmd.group(1)], check=True, timeout=30,
                       capture_output=True)
        ok(rig.deploy("v2"), "fab deploy after ssh-keyscan")
        check_status_is_true(rig, expect_version="v2")
        toml.write_text(toml.read_text().replace(str(known), str(rig.sshd.known_hosts)))
        ok(rig.deploy("v1"))


@pytest.mark.parametrize("cell", cells("hook-not-executable"))
def test_hook_not_executable_chmod_as_printed(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    hooks = rig.project.dir / "hooks"
    hooks.mkdir()
    (hooks / "pre-deploy").write_text("#!/bin/sh\nexit 0\n")
    text = refused(rig.deploy("v2"), "chmod +x")
    cmd = re.search(r"(chmod \+x \S+?),? or remove it", text)
    assert cmd, text
    subprocess.run(["bash", "-c", cmd.group(1)], check=True, timeout=30)
    ok(rig.deploy("v2"), "fab deploy after chmod")
    check_status_is_true(rig, expect_version="v2")


@pytest.mark.parametrize("cell", cells("foreign-process", ("reload", "local"), ("lua", "ssh")))
def test_foreign_process_on_the_idle_port_stop_it_then_re_run(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", rig.project.green))
    squatter.listen()
    try:
        refused(rig.deploy("v2", "--set", "process.port_free_timeout=0.5"),
                "held by a process bluegreen did not start", "stop that process")
        check_status_is_true(rig, expect_version="v1")
    finally:
        squatter.close()  # the user stops that process
    ok(rig.deploy("v2"), "the re-run")
    check_status_is_true(rig, expect_version="v2")


# ------------------------------------------------------------------------------ state files


@pytest.mark.parametrize("cell", cells("corrupt-state"))
def test_corrupt_state_fab_status_and_fab_history_then_restore_and_re_run(cell: Cell,
                                                                        rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))
    state = rig.project.app_root / "state.json"
    good = state.read_text()
    state.write_text(good[:40])  # truncated (by hand, a bad disk...)
    refused(rig.deploy("v3"), "is corrupt", "`fab status`", "`fab history`", "re-run")
    shown = rig.fab("status")  # shows what the routers and slots do, beside the problem
    assert shown.returncode == 5 and "UNREADABLE" in shown.stdout, shown.stdout + shown.stderr
    assert "routes to green" in shown.stdout, shown.stdout
    ok(rig.fab("history"), "fab history")
    state.write_text(good)  # restored by hand (here: from the copy the operator kept)
    ok(rig.deploy("v3"), "the re-run")
    converged(rig, "v3")


@pytest.mark.parametrize("cell", cells("unreadable-journal"))
def test_unreadable_journal_fab_status_shows_the_truth(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    (rig.project.app_root / "intent.json").write_text("{not json")
    refused(rig.deploy("v2"), "journal", "`fab status`")
    rc, st, ran = status_json(rig)
    assert rc == 5 and st.get("pending_switch"), f"`fab status` failed ({rc}):\n{ran.stderr}"


@pytest.mark.parametrize("cell", cells("unreadable-journal-remove"))
def test_unreadable_journal_remove_it_then_fab_switch_to(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    journal = rig.project.app_root / "intent.json"
    journal.write_text("{not json")
    text = refused(rig.deploy("v2"), "the switch journal", "is unreadable")
    assert f"remove {journal}" in text
    journal.unlink()
    door = front_door(rig)
    ok(rig.fab("switch", "--to", door.slot), f"fab switch --to {door.slot}")
    converged(rig, door.version)


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("cell", cells("version-one-line"))
def test_version_with_a_line_break_pass_it_as_one_line(cell: Cell, rig: Rig) -> None:
    forged = rig.project.deploy("v1\nforged", artifact=rig.project.artifacts["v1"], check=None)
    text = refused(forged, "--version", rc=2)
    assert "pass --version as one line of text" in text
    ok(rig.deploy("v1"), "fab deploy --version v1")
    check_status_is_true(rig, expect_version="v1")


@pytest.mark.parametrize("cell", cells("config-path"))
def test_no_config_file_pass_config_path(cell: Cell, rig: Rig, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fabfile.py").write_text((rig.project.dir / "fabfile.py").read_text())
    ran = _fab_in(rig, elsewhere, "status")
    refused(ran, "not found", "pass --config PATH")
    ok(_fab_in(rig, elsewhere, "deploy", "--config", str(rig.project.dir / "bluegreen.toml"),
               "--artifact", str(rig.project.artifacts["v1"]), "--version", "v1"),
       "fab deploy --config PATH")
    check_status_is_true(rig, expect_version="v1")


@pytest.mark.parametrize("cell", cells("since"))
def test_bad_since_pass_it_again(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    refused(rig.fab("history", "--since", "soon"), "--since", "pass --since again", rc=2)
    shown = rig.fab("history", "--since", "1h")
    ok(shown, "fab history --since 1h")
    assert "deploy" in shown.stdout


# ------------------------------------------------------------------------------ connect, disk


@pytest.mark.parametrize("cell", cells("unreachable", ("reload", "ssh")))
def test_a_host_that_cannot_be_reached_re_run_when_it_answers(cell: Cell, rig: Rig) -> None:
    assert rig.sshd is not None
    ok(rig.deploy("v1"))
    rig.sshd.stop()  # the host is down (its sshd gone): nothing answers on its port
    try:
        text = refused(rig.deploy("v2"), "1 of 1 host(s) cannot be reached; nothing was "
                       "changed anywhere", "; then re-run when they answer")
    finally:
        rig.sshd.start()
    assert "phase=connect" in text, text
    ok(rig.deploy("v2"), "the re-run")
    check_status_is_true(rig, expect_version="v2")


@pytest.fixture
def deploy_user_rig(cell: Cell, artifacts: dict[str, Path]) -> Iterator[Rig]:
    """The app host over real SSH on loopback, logged in to as a NON-root user whose sudo
    rights bluegreen checks (sudo.traffic = ["nginx"]); its files are the user's own. No
    network namespace: the sshd listens on 127.0.0.1 like the other cells'. Everything
    lives in a /tmp directory the user can traverse (pytest's is root's alone), and is
    stopped by PID and removed afterwards, the sudoers file the test adds too."""
    import pwd
    import tempfile

    from testkit.fleet import DEPLOY_USER, ensure_deploy_user
    from testkit.project import Project

    if shutil.which("sudo") is None or shutil.which("visudo") is None:
        pytest.skip("needs sudo and visudo (make setup installs sudo)")
    ensure_deploy_user(DEPLOY_USER)
    user = pwd.getpwnam(DEPLOY_USER)
    work = Path(tempfile.mkdtemp(prefix="bghint-sudo-", dir="/tmp"))
    work.chmod(0o755)
    nginx = PrivateNginx(work / "nginx")
    sshd = TestSshd(work / "sshd")
    proj: Project | None = None
    try:
        nginx.start()
        os.chown(nginx.conf_dir, user.pw_uid, user.pw_gid)  # nginx.target is written there
        sshd.start()
        toml = (f'[ssh]\nuser = "{DEPLOY_USER}"\nkey_file = "{sshd.user_key}"\n'
                f'known_hosts = "{sshd.known_hosts}"\n\n[sudo]\ntraffic = ["nginx"]\n')
        proj = Project(work / "app", nginx, artifacts, f'app = ["127.0.0.1:{sshd.port}"]',
                       ssh_toml=toml, mode=cell.mode).write()
        proj.srv.mkdir()
        os.chown(proj.srv, user.pw_uid, user.pw_gid)
        yield Rig(proj, nginx, cell.mode, cell.host, sshd)
    finally:
        if proj is not None:
            proj.stop_everything()
        sshd.stop()
        nginx.stop()
        SUDOERS_ADDED.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


# where the sudo test installs the rule the hint prints (removed by its fixture)
SUDOERS_ADDED = Path(f"/etc/sudoers.d/bghint-{os.getpid()}")


@pytest.mark.parametrize("cell", cells("sudo-rule", ("reload", "ssh")))
def test_a_missing_sudo_rule_add_the_printed_line_then_re_run(cell: Cell,
                                                              deploy_user_rig: Rig) -> None:
    rig = deploy_user_rig
    text = refused(rig.deploy("v1"), "sudo rules or permissions missing; nothing was changed "
                   "anywhere", "no sudo rule lets bgdeploy run", "; then re-run")
    assert "phase=connect" in text, text
    line = re.search(r"\(visudo -f /etc/sudoers\.d/bluegreen\): (.+?); then re-run", text)
    assert line, text
    staged = rig.project.dir / "sudoers"
    staged.write_text(line.group(1) + "\n")
    staged.chmod(0o440)
    checked = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, f"the printed line is not valid sudoers:\n{line.group(1)}" \
        f"\n{checked.stdout}{checked.stderr}"
    os.replace(staged, SUDOERS_ADDED)  # added as printed (a file of its own, not ours)
    ran = rig.deploy("v1")
    ok(ran, "the re-run")
    assert "sudo rules in place on 1 host(s)" in ran.stdout, ran.stdout
    converged(rig, "v1")


def _ballast(rig: Rig) -> Path:
    from bluegreen.failpoints import BALLAST
    return rig.project.srv / BALLAST


@pytest.mark.parametrize("cell", [pytest.param(Cell("hint", "disk-check", "reload", "local",
                                                    tmpfs=True), id="reload-local-tmpfs",
                                               marks=FULL)])
def test_the_disk_check_refuses_free_space_then_re_run(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    # the disk fills after the lock is taken (state and lock still written), before the
    # upload: the check before any upload measures it and refuses
    ran = rig.deploy("v2", env=failpoint_env("before:upload", f"fill:{rig.project.srv}"))
    text = refused(ran, "not enough disk space on local", "keep_releases bounds how many stay",
                   "then re-run")
    assert "phase=upload" in text, text
    releases = run_printed(rig, text)  # `fab releases`: where the older releases are
    ok(releases, "fab releases")
    assert "v1" in releases.stdout, releases.stdout  # type: ignore[attr-defined]
    check_status_is_true(rig, expect_version="v1")  # on the full disk: the truth, exit 0
    _ballast(rig).unlink()  # the space is freed (what filled it is gone)
    ok(rig.deploy("v2"), "the re-run")
    converged(rig, "v2")


@pytest.mark.parametrize("cell", [pytest.param(Cell("hint", "unpack-enospc", "reload", host,
                                                    tmpfs=True), id=f"reload-{host}-tmpfs",
                                               marks=FULL) for host in ("local", "ssh")])
def test_a_disk_filled_during_the_unpack_free_space_then_re_run(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ran = rig.deploy("v2", env=failpoint_env("upload.mid", f"fill:{rig.project.srv}"))
    text = refused(ran, "disk full on", "cannot unpack", "`fab releases`), then re-run")
    ok(run_printed(rig, text), "fab releases")
    check_status_is_true(rig, expect_version="v1")
    _ballast(rig).unlink()
    ok(rig.deploy("v2"), "the re-run")
    converged(rig, "v2")


class _HostWithoutUnzip(TestSshd):
    """The app host's sshd in a mount namespace of its own (not a network namespace: it
    listens on loopback as before) whose /usr/bin - and so /bin, a link to it - has no
    unzip: an overlay with a whiteout in its place. What that host runs, it runs there."""

    __test__ = False

    @property
    def package(self) -> Path:
        """unzip as its package would install it (a copy of this machine's binary)."""
        return self.workdir / "unzip-package" / "unzip"

    def _argv(self) -> list[str]:
        layers = self.workdir / "layers"
        layers.mkdir(exist_ok=True)
        self.package.parent.mkdir(exist_ok=True)
        shutil.copy2("/usr/bin/unzip", self.package)
        boot = self.workdir / "boot.sh"
        boot.write_text(
            "set -e\n"
            f"mount -t tmpfs tmpfs '{layers}'\n"  # this namespace's own: gone with it
            f"mkdir '{layers}/upper' '{layers}/work'\n"
            f"mknod '{layers}/upper/unzip' c 0 0\n"  # an overlay whiteout: no unzip here
            f"mount -t overlay overlay -o 'lowerdir=/usr/bin,upperdir={layers}/upper,"
            f"workdir={layers}/work' /usr/bin\n"
            f"exec {' '.join(super()._argv())}\n")
        return ["unshare", "--mount", "--propagation", "private", "sh", str(boot)]

    def install_unzip(self) -> None:
        """What the hint says: install it on the host (here over SSH, as root)."""
        client = self.connect()
        try:
            _, out, err = client.exec_command(
                f"install -m 0755 '{self.package}' /usr/bin/unzip && command -v unzip")
            assert out.channel.recv_exit_status() == 0, err.read().decode()
        finally:
            client.close()


def _as_zip(tarball: Path, out: Path) -> Path:
    """The same release as a zip (members and their modes kept: bin/runner stays
    executable once unzipped)."""
    import tarfile
    import zipfile
    with tarfile.open(tarball) as tar, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in tar.getmembers():
            info = zipfile.ZipInfo(member.name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | member.mode) << 16
            data = tar.extractfile(member)
            assert data is not None
            zf.writestr(info, data.read())
    return out


@pytest.mark.parametrize("cell", cells("no-unzip", ("reload", "ssh")))
def test_no_unzip_on_the_app_host_install_it_then_re_run(cell: Cell, rig: Rig,
                                                         tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("unzip") is None:
        pytest.skip("needs unshare (util-linux) and unzip on this machine")
    assert rig.sshd is not None
    ok(rig.deploy("v1"))
    rig.sshd.stop()  # the same host (address, port, keys), now without unzip
    host = _HostWithoutUnzip(rig.sshd.workdir, port=rig.sshd.port)
    rig.sshd = host  # the rig stops it by its PID afterwards
    host.start()
    shipped = _as_zip(rig.project.artifacts["v2"], tmp_path / "demo-v2.zip")
    text = refused(rig.project.deploy("v2", artifact=shipped, check=None), "has no unzip",
                   "apt-get install unzip", "then re-run; nothing was changed")
    assert "phase=upload" in text, text
    check_status_is_true(rig, expect_version="v1")
    host.install_unzip()
    ok(rig.project.deploy("v2", artifact=shipped, check=None), "the re-run")
    converged(rig, "v2")


# ------------------------------------------------------------------------------ nginx, shared


@pytest.mark.parametrize("cell", cells("other-app-broken", ("reload", "local"), ("lua", "ssh")))
def test_another_apps_broken_file_fixed_then_re_run(cell: Cell, rig: Rig) -> None:
    ok(rig.deploy("v1"))
    other = rig.nginx.conf_dir / "shop.conf"  # another app's file on the same nginx
    other.write_text("# shop, half-written by an interrupted switch\nupstream shop {\n")
    refused(rig.deploy("v2"), f"because of {other}, which is not this app's file",
              "its next `fab` command recovers it), then re-run")
    check_status_is_true(rig, expect_version="v1")
    other.write_text("# shop, recovered\n")  # its owner's next command (here: by hand)
    ok(rig.deploy("v2"), "the re-run")
    converged(rig, "v2")


def _older_file(rig: Rig) -> None:
    """The live file as a bluegreen from before maintenance mode rendered it: the same
    routing, without the include of the maintenance page."""
    target = rig.nginx.conf_dir / "demo.conf"
    kept = [line for line in target.read_text().splitlines(keepends=True)
            if "maintenance" not in line]
    target.write_text("".join(kept))
    rig.nginx.reload()


@pytest.mark.parametrize("cell", cells("maintenance-older-file"))
def test_maintenance_on_an_older_rendered_file_fab_switch_to_the_live_slot(cell: Cell,
                                                                           rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))  # green live
    _older_file(rig)
    check_status_is_true(rig, expect_version="v2")  # the routing is the same: consistent
    text = refused(rig.fab("maintenance", "on", "--message", "back soon"),
                   "does not include the maintenance page yet",
                   "`fab switch --to <the live slot>` once")
    live = front_door(rig).slot
    ok(rig.fab("switch", "--to", live), f"fab switch --to {live}")
    check_status_is_true(rig, expect_version="v2")
    ok(rig.fab("maintenance", "on", "--message", "back soon"), "fab maintenance on (again)")
    door = requests.get(rig.nginx.url("/"), timeout=5)
    assert door.status_code == 503 and "back soon" in door.text, (door.status_code, door.text)
    ok(rig.fab("maintenance", "off"), "fab maintenance off")
    converged(rig, "v2")
    assert text


@pytest.mark.parametrize("cell", cells("maintenance-lost", ("lua", "local")))
def test_maintenance_lost_by_an_nginx_restart_fab_maintenance_on_again(cell: Cell,
                                                                       rig: Rig) -> None:
    ok(rig.deploy("v1"))
    ok(rig.fab("maintenance", "on", "--message", "back at 14:00"), "fab maintenance on")
    assert requests.get(rig.nginx.url("/"), timeout=5).status_code == 503
    rig.nginx.stop()  # a restart, not a reload: the shared dict is gone
    rig.nginx.start()
    assert requests.get(rig.nginx.url("/"), timeout=5).status_code == 200  # the page is lost
    shown = rig.fab("status")
    no_traceback(shown)
    assert "MAINTENANCE PAGE IS OFF here, unlike state (nginx restarted?): run " \
        "`fab maintenance on` again" in shown.stdout, shown.stdout
    cmd = command_in(shown.stdout[shown.stdout.index("MAINTENANCE PAGE IS OFF"):])[0]
    assert cmd == ["fab", "maintenance", "on"], cmd
    ok(rig.fab(*cmd[1:]), "fab maintenance on (as printed)")
    door = requests.get(rig.nginx.url("/"), timeout=5)
    assert door.status_code == 503 and "back at 14:00" in door.text, (door.status_code,
                                                                       door.text)
    shown = rig.fab("status")
    assert shown.returncode == 0 and "unlike state" not in shown.stdout, shown.stdout
    ok(rig.fab("maintenance", "off"), "fab maintenance off")
    converged(rig, "v1")


# ------------------------------------------------------------------------------ the watch


def _watch_on(rig: Rig, seconds: float = 2) -> None:
    toml = rig.project.dir / "bluegreen.toml"
    toml.write_text(toml.read_text().replace("[watch]\nseconds = 0",
                                             f"[watch]\nseconds = {seconds}\ninterval = 0.1"))


def _crash_in_the_watch(rig: Rig, version: str, tmp_path: Path, slot: str,
                        extra: tuple[str, ...] = (), point: str = "before:watch") -> str:
    """Deploy `version`, held where the watch begins; its slot crashes there (our own test
    app, killed by its pid); returns what the run printed."""
    hold = tmp_path / f"hold-{version}"
    with held_at(rig, version, point, hold, args=extra) as proc:
        pid = _slot_pid(rig, slot)
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        hold.unlink()
        proc.wait(timeout=120)
    out = proc.output  # type: ignore[attr-defined]
    assert proc.returncode == 1 and "Traceback" not in out, out
    return str(out)


@pytest.mark.parametrize("cell", cells("watch-first-deploy"))
def test_a_watch_breach_on_the_first_deploy_fix_the_build_and_deploy_again(
        cell: Cell, rig: Rig, tmp_path: Path) -> None:
    _watch_on(rig)
    out = _crash_in_the_watch(rig, "v1", tmp_path, "blue")
    assert "auto-reverted: slot blue exited" in out, out
    assert "there is no warm slot to go back to (this was the first deploy)" in out, out
    assert "fix the build and `fab deploy` again" in out, out
    ok(rig.deploy("v2"), "fab deploy (the fixed build)")
    converged(rig, "v2")


@pytest.mark.parametrize("cell", cells("rollback-to-bad"))
@pytest.mark.parametrize("way_out", ["good-build", "force"])
def test_rollback_refused_its_target_was_auto_reverted_fab_deploy(
        cell: Cell, rig: Rig, tmp_path: Path, way_out: str) -> None:
    _watch_on(rig)
    ok(rig.deploy("v1"))
    out = _crash_in_the_watch(rig, "v2", tmp_path, "green")
    assert "reverted to blue" in out and "v2 is marked bad" in out, out
    ok(rig.deploy("v2", "--force"), "fab deploy --force (the same build, this time fine)")
    ok(rig.deploy("v3"))  # v2, once auto-reverted, is now the previous release
    refused(rig.fab("rollback"), "the previous release v2 was auto-reverted",
            "rollback never goes back to a bad release; `fab deploy` a good build, "
            "or `fab deploy --force` that artifact if you must")
    check_status_is_true(rig, expect_version="v3")
    if way_out == "good-build":
        ok(rig.deploy("v1"), "fab deploy (a good build)")
        converged(rig, "v1")
    else:
        ok(rig.deploy("v2", "--force"), "fab deploy --force (that artifact)")
        converged(rig, "v2")


@pytest.mark.parametrize("cell", cells("canary-revert-failed", ("lua", "ssh")))
def test_a_canary_whose_revert_failed_fab_switch_abort(cell: Cell, rig: Rig,
                                                       tmp_path: Path) -> None:
    assert rig.sshd is not None
    ok(rig.deploy("v1"))
    hold = tmp_path / "hold"
    with held_at(rig, "v2", "before:watch", hold,
                 args=("--canary", "50,100", "--step", "2")) as proc:
        rig.sshd.stop()  # the host goes down while the canary is watched
        hold.unlink()
        proc.wait(timeout=120)
    out = proc.output  # type: ignore[attr-defined]
    rig.sshd.start()
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "the revert to 0% FAILED too" in out, out
    assert "phase=watch" in out and "phase=health" not in out, out  # where it failed
    assert "so the canary may still have its share of users" in out, out
    assert "the canary may still get users: run `fab switch --abort` now" in out, out
    cmd = command_in(out[out.index("the canary may still get users"):])[0]
    assert cmd == ["fab", "switch", "--abort"], cmd
    ok(rig.fab(*cmd[1:]), "fab switch --abort")
    converged(rig, "v1")


# ------------------------------------------------------------------------------ haproxy


@dataclass(frozen=True)
class _HaproxyFront:
    """What the checks ask of a rig's front door (its URL), answered by haproxy."""

    hap: PrivateHaproxy

    def url(self, path: str = "/") -> str:
        return self.hap.url(path)


@pytest.fixture
def hrig(cell: Cell, tmp_path: Path, artifacts: dict[str, Path]) -> Iterator[Rig]:
    """A real haproxy (master-worker, `-f haproxy.cfg -f conf.d`) in front of the demo
    app, as tests/integration/test_haproxy_fab.py sets it up; stopped by PID afterwards."""
    hap = PrivateHaproxy(tmp_path / "haproxy", include_dir=True).start()
    unused = PrivateNginx(tmp_path / "nginx-unused")  # never started: haproxy routes
    proj = HaproxyProject(tmp_path / "app", unused, artifacts, 'app = ["local"]',
                          haproxy=hap).write()
    try:
        yield Rig(proj, _HaproxyFront(hap), cell.mode, cell.host)  # type: ignore[arg-type]
    finally:
        proj.stop_everything()
        hap.stop()


def _haproxy_template(rig: Rig, name: str, old: str, new: str) -> tuple[Path, str]:
    """A copy of the bundled haproxy template with `old` replaced; (its path, the
    --set that selects it)."""
    bundled = CORE.parent / "nginx_templates" / "haproxy.cfg.j2"
    text = bundled.read_text()
    assert old in text, f"the bundled template changed: {old!r} is not in it"
    path = rig.project.dir / name
    path.write_text(text.replace(old, new))
    return path, f'haproxy.template="{name}"'


@pytest.mark.parametrize("cell", cells("haproxy-verify", ("haproxy", "local")))
def test_haproxy_verify_failure_fab_status_shows_what_it_routes_to(cell: Cell,
                                                                   hrig: Rig) -> None:
    rig = hrig
    ok(rig.deploy("v1"))
    ok(rig.deploy("v2"))  # green live, v1 warm in blue
    path, lying = _haproxy_template(rig, "lying.cfg.j2", "X-Bluegreen-Slot %[srv_name,field(-1,-)]",
                                    "X-Bluegreen-Slot nope")
    text = refused(rig.fab("switch", "--set", lying, "--set", "haproxy.verify_timeout=1"),
                   "did not answer from slot blue",
                   "the template must keep the X-Bluegreen-Slot header; `fab status` shows "
                   "what haproxy routes to")
    assert "phase=verify" in text, text
    shown = run_printed(rig, text)
    ok(shown, "fab status")
    assert "haproxy's server states" in shown.stdout, shown.stdout  # type: ignore[attr-defined]
    check_status_is_true(rig, expect_version="v2")  # the switch was put back
    path.unlink()  # the template fixed: the bundled one again
    ok(rig.fab("switch"), "fab switch (template fixed)")
    converged(rig, "v1")


@pytest.mark.parametrize("cell", cells("haproxy-socket", ("haproxy", "local")))
def test_haproxy_admin_socket_unreachable_fab_status_says_what_it_can_see(cell: Cell,
                                                                          hrig: Rig) -> None:
    rig = hrig
    hap = rig.project.hap  # type: ignore[attr-defined]
    ok(rig.deploy("v1"))
    hap.stop()  # haproxy is down: nothing answers on its admin socket
    try:
        text = refused(rig.deploy("v2"), "did not answer on", "is haproxy running, with "
                       "`stats socket ... level admin` there? (`fab status` says what it "
                       "can see)")
        shown = rig.fab("status")  # the printed command, in that very situation
        no_traceback(shown)
        out = shown.stdout + shown.stderr
        # it cannot see haproxy: it says so for that host, and its exit code says the
        # routing is not known to be consistent (README: 5)
        assert shown.returncode == 5, out
        assert "unknown: haproxy on local did not answer on" in out, out
        assert "app host local" in out and "v1" in out, out
    finally:  # haproxy is back (its state file keeps the servers' states); stop() took
        Path(hap.admin_socket).parent.mkdir(exist_ok=True)  # its socket's directory
        hap.start()
    check_status_is_true(rig, expect_version="v1")
    ok(rig.deploy("v2"), "the re-run")
    converged(rig, "v2")
    assert text


@pytest.mark.parametrize("cell", cells("haproxy-rejects", ("haproxy", "local")))
def test_haproxy_rejects_the_config_fix_it_and_re_run(cell: Cell, hrig: Rig) -> None:
    rig = hrig
    ok(rig.deploy("v1"))
    path, broken = _haproxy_template(rig, "mine.cfg.j2", "balance roundrobin",
                                     "balance roundrobin\n    bogus_keyword 1")
    text = refused(rig.deploy("v2", "--set", broken), "haproxy -c rejected the rendered config",
                   "unknown keyword 'bogus_keyword'", f"fix {'mine.cfg.j2'} (or the main config")
    assert "and re-run" in text, text
    check_status_is_true(rig, expect_version="v1")
    _haproxy_template(rig, "mine.cfg.j2", "balance roundrobin", "balance roundrobin")  # fixed
    ok(rig.deploy("v2", "--set", broken), "the same command again")
    converged(rig, "v2")
    assert path.exists()


# ------------------------------------------------------------------------------ helpers


def _fab_argv(rig: Rig) -> list[str]:
    from testkit.project import fab_path
    return [fab_path()]


def _env(rig: Rig) -> dict[str, str]:
    from testkit.project import clean_env
    return clean_env(rig.project.env)


def _fab_in(rig: Rig, where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_fab_argv(rig), *args], cwd=where, env=_env(rig),
                          capture_output=True, text=True, timeout=120, check=False)
