"""What a fleet run prints and records, as pure functions: phase closing lines with host
counts and the slowest host, progress lines at 16 and 200 hosts, the per-host summary
table, the flip skew, the sudo check's parsing and its error, and the fleet flags."""

from __future__ import annotations

import io
import re

import pytest

from bluegreen import config, preflight
from bluegreen.config import HostSpec
from bluegreen.errors import ArgumentError
from bluegreen.fleet import Fleet, explain_sudo_failure, format_table
from bluegreen.report import PhaseTally, Reporter, phase_end_line, progress_line
from bluegreen.runner import fleet_flags
from bluegreen.traffic import TrafficChange


def tally(n: int, failed: tuple[str, ...] = (), running: int = 0) -> PhaseTally:
    t = PhaseTally()
    labels = [f"app{i:02d}" for i in range(1, n + 1)]
    t.expect(labels)
    for i, label in enumerate(labels[: n - running]):
        t.done(label, 0.1 + i / 1000, failed=label in failed)
    return t


def test_closing_line_at_16_hosts_counts_them_and_names_the_slowest() -> None:
    line = phase_end_line("upload", True, 0.42, tally(16), "2694 bytes sent")
    assert line == "<-- upload    16/16 ok 0.420s (slowest app16 0.115s)  2694 bytes sent"


def test_closing_line_of_a_failed_phase_counts_the_hosts_that_finished_ok() -> None:
    line = phase_end_line("health", False, 10.0, tally(16, failed=("app03",)))
    assert line == "<-- health    15/16 FAILED after 10.000s (slowest app16 0.115s)"


def test_one_host_keeps_the_plain_line() -> None:
    assert phase_end_line("lock", True, 0.01, tally(1)) == "<-- lock      ok 0.010s"
    assert phase_end_line("lock", True, 0.01, None, "x") == "<-- lock      ok 0.010s  x"


def test_progress_line_at_16_and_at_200_hosts_stays_one_line() -> None:
    assert progress_line("health", tally(16, running=2), 10.0) == (
        "    health    14/16 hosts done after 10.0s; waiting for app15, app16")
    line = progress_line("health", tally(200, failed=("app01",), running=150), 20.0)
    assert line == ("    health    50/200 hosts done, 1 failed after 20.0s; waiting for "
                    "app51, app52, app53 (+147)")
    assert "\n" not in line and len(line) < 120


def test_reporter_prints_failures_per_host_and_one_closing_line() -> None:
    out = io.StringIO()
    r = Reporter(stream=out)
    with pytest.raises(RuntimeError), r.phase("stop", "slot green"):
        r.hosts_started(["a", "b", "c"])
        r.host_done("a", 0.2)
        r.host_done("b", 0.5, "port 8082 is held\n  detail")
        r.host_done("c", 0.3)
        raise RuntimeError
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["--> stop      slot green", "    b: FAILED after 0.50s: port 8082 is held"]
    assert re.fullmatch(r"<-- stop      2/3 FAILED after \d\.\d{3}s \(slowest b 0\.500s\)",
                        lines[2]), lines[2]
    assert len(lines) == 3


def cfg16() -> config.Config:
    return config.from_dict({"app": "demo", "start": "x {port}",
                             "hosts": {"app": [f"app{i:02d}" for i in range(1, 17)],
                                       "traffic": ["t1", "t2"]}})


def test_summary_table_has_a_row_per_host_with_phases_and_ssh_costs() -> None:
    fleet = Fleet(cfg16())
    for i in range(1, 17):
        fleet.record(f"app{i:02d}", "upload", 0.1)
        fleet.record(f"app{i:02d}", "health", 0.5, "unhealthy" if i == 7 else None)
    fleet.record("t1", "switch", 0.02)
    rows = fleet.rows()
    assert [r["host"] for r in rows][:2] == ["app01", "app02"] and len(rows) == 18
    assert rows[6]["result"] == "failed" and rows[6]["failed_phase"] == "health"
    assert rows[16]["role"] == "traffic" and rows[16]["phases"] == {"switch": 0.02}
    assert rows[17]["result"] == "-"  # t2 did nothing in this run
    text = format_table(rows).splitlines()
    assert text[0].split() == ["host", "role", "result", "upload", "health", "switch",
                               "total", "conn", "cmds", "files", "tun"]
    assert text[7].startswith("app07 ") and text[7].endswith("health: unhealthy")
    assert len(text) == 19


def test_flip_skew_is_first_flip_start_to_last_flip_end() -> None:
    change = TrafficChange(cfg16(), [], "green", "r", "v")
    assert change.skew_ms is None
    change.flips = {"t1": (10.000, 10.004)}
    assert change.skew_ms is None  # one host: no skew
    change.flips = {"t1": (10.000, 10.004), "t2": (10.001, 10.0125)}
    assert change.skew_ms == pytest.approx(12.5)


def test_view_acts_on_a_batch_but_shares_connections_and_rows() -> None:
    fleet = Fleet(cfg16(), opener=lambda spec, cfg: _Dummy(spec, cfg))
    batch = fleet.view(["app02", "app03"])
    assert [h.label for h in batch.app_hosts] == ["app02", "app03"]
    assert batch.app_hosts[0] is fleet.app_hosts[1]
    batch.record("app02", "upload", 0.1)
    assert fleet.rows()[1]["phases"] == {"upload": 0.1}
    assert fleet.rows()[1]["connections"] == 1


class _Dummy:
    def __init__(self, spec: HostSpec, cfg: config.Config) -> None:
        from bluegreen.hosts import HostStats
        self.spec, self.label, self.stats = spec, spec.label, HostStats(connects=1)
        self.phase = ""


# ---------------------------------------------------------------- sudo


def sudo_cfg() -> config.Config:
    return config.from_dict({"app": "demo", "start": "x {port}",
                             "sudo": {"traffic": ["nginx"]},
                             "nginx": {"command": "/usr/sbin/nginx",
                                       "target": "/etc/nginx/bluegreen/{app}.conf"}})


def test_sudo_rules_per_host_type() -> None:
    cfg = sudo_cfg()
    assert cfg.nginx.command == "sudo -n /usr/sbin/nginx"
    assert preflight.sudo_rules(cfg, "traffic") == ["/usr/sbin/nginx -t",
                                                    "/usr/sbin/nginx -s reload"]
    assert preflight.sudo_rules(cfg, "app") == []
    sd = config.from_dict({"app": "demo", "start": "x {port}", "sudo": {"app": ["systemctl"]},
                           "process": {"backend": "systemd"}})
    # enable/disable: a started slot is enabled, a stopped one disabled (reboot survival)
    assert preflight.sudo_rules(sd, "app") == [
        "systemctl daemon-reload", "systemctl restart demo@blue.service",
        "systemctl stop demo@blue.service", "systemctl enable demo@blue.service",
        "systemctl disable demo@blue.service", "systemctl restart demo@green.service",
        "systemctl stop demo@green.service", "systemctl enable demo@green.service",
        "systemctl disable demo@green.service"]
    assert preflight.writable_dirs(cfg, HostSpec("t1"), "traffic") == ["/etc/nginx/bluegreen"]


def test_sudo_check_output_is_parsed_and_the_error_names_the_missing_rule() -> None:
    out = ("user deploy\nbin /usr/sbin/nginx /usr/sbin/nginx\n"
           "missing /usr/sbin/nginx -s reload\nunwritable /etc/nginx/bluegreen\n")
    check = preflight.parse_check(out)
    assert check.user == "deploy" and not check.ok
    assert check.missing == ["/usr/sbin/nginx -s reload"]
    rules = preflight.sudo_rules(sudo_cfg(), "traffic")
    err = preflight.sudo_error({"t2": (check, rules)})
    assert err.phase == "connect" and err.host == "t2"
    assert ("t2: no sudo rule lets deploy run `/usr/sbin/nginx -s reload` without a password"
            in err.what)
    assert "t2: deploy cannot write /etc/nginx/bluegreen" in err.what
    assert ("deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /usr/sbin/nginx -s reload"
            in err.hint)
    assert "nothing was changed" in err.what


def test_sudo_check_resolves_a_bare_binary_to_the_path_sudoers_needs() -> None:
    check = preflight.parse_check("user deploy\nbin nginx /usr/sbin/nginx\nmissing nginx -t\n")
    assert check.resolve("nginx -t") == "/usr/sbin/nginx -t"
    assert preflight.parse_check("no-sudo\nuser deploy\n").no_sudo


def test_sudo_check_script_quotes_every_value() -> None:
    script = preflight.check_script(["/opt/my nginx/nginx -t"], ["/srv/a b; rm -rf /"])
    assert "'/srv/a b; rm -rf /'" in script
    assert "printf 'missing %s\\n' '/opt/my nginx/nginx -t'" in script


def test_sudoers_line_escapes_what_sudoers_reads_as_syntax() -> None:
    assert preflight.sudoers_line("deploy", ["/usr/sbin/nginx -t", "/bin/x a=b,c:d"]) == (
        "deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /bin/x a\\=b\\,c\\:d")


def test_a_sudo_refusal_at_run_time_gets_a_hint() -> None:
    assert "sudoers rule is missing" in explain_sudo_failure("sudo: a password is required")
    assert explain_sudo_failure("nginx: [emerg] unexpected }") == ""


def test_unreachable_hosts_are_listed_in_one_error() -> None:
    from bluegreen.errors import BluegreenError
    errs = [BluegreenError("cannot reach 198.19.1.5:22: [Errno 111] Connection refused",
                           host="app03", hint="check the address"),
            BluegreenError("cannot reach 198.19.1.9:22: timed out", host="app07")]
    err = preflight.unreachable_error(errs, 18)
    assert err.what.splitlines() == [
        "2 of 18 host(s) cannot be reached; nothing was changed anywhere:",
        "    app03: cannot reach 198.19.1.5:22: [Errno 111] Connection refused",
        "    app07: cannot reach 198.19.1.9:22: timed out"]
    assert err.host == "app03,app07" and err.phase == "connect"
    # the first host's own hint, then the one step every such hint leads to
    assert err.hint == "check the address; then re-run when they answer"


def test_sudo_config_refuses_a_command_that_already_says_sudo() -> None:
    with pytest.raises(config.ConfigError, match="adds `sudo -n` itself"):
        config.from_dict({"app": "demo", "start": "x {port}", "sudo": {"traffic": "nginx"},
                          "nginx": {"command": "sudo nginx"}})


# ---------------------------------------------------------------- flags


def test_fleet_flags_override_the_fleet_keys_and_refuse_nonsense() -> None:
    cfg = config.from_dict({"app": "demo", "start": "x {port}"})
    got = fleet_flags(cfg, parallel=4, batch="25%", max_fail=1, pause=2.0, keep_partial=True)
    assert (got.fleet.parallel, got.fleet.batch, got.fleet.max_fail, got.fleet.pause,
            got.fleet.keep_partial) == (4, "25%", 1, 2.0, True)
    assert fleet_flags(cfg) is cfg
    for kw in ({"parallel": 5000}, {"batch": "0%"}, {"max_fail": -2}, {"pause": -1.0}):
        with pytest.raises(ArgumentError):
            fleet_flags(cfg, **kw)  # type: ignore[arg-type]
    assert config.from_dict({"app": "d", "start": "x {port}",
                             "fleet": {"batch": 2}}).fleet.batch == "2"


def test_systemd_backend_runs_systemctl_through_sudo_when_configured() -> None:
    from bluegreen.hosts import LocalHost
    from bluegreen.process import SystemdBackend
    raw = {"app": "demo", "start": "x {port}", "process": {"backend": "systemd"}}
    plain = SystemdBackend(config.from_dict(raw))
    sudo = SystemdBackend(config.from_dict({**raw, "sudo": {"app": ["systemctl"]}}))
    host = LocalHost(HostSpec("local"), config.from_dict(raw))
    assert "out=$(systemctl stop demo@blue.service" in plain.stop_script(host, "blue")
    assert "out=$(sudo -n systemctl stop demo@blue.service" in sudo.stop_script(host, "blue")
    # exactly what the connect phase checks sudo for
    rules = preflight.sudo_rules(sudo.cfg, "app")
    assert "systemctl stop demo@blue.service" in rules


def test_a_slow_fan_out_prints_progress_naming_the_hosts_it_waits_for() -> None:
    import time
    out = io.StringIO()
    report = Reporter(stream=out)
    fleet = Fleet(cfg16(), opener=lambda spec, cfg: _Dummy(spec, cfg), report=report,
                  progress_every=0.05, parallel=16)
    with report.phase("health", "GET /health"):
        fleet.on_all(fleet.app_hosts, "health",
                     lambda h: time.sleep(0.3 if h.label == "app09" else 0.0))
    lines = out.getvalue().splitlines()
    progress = [ln for ln in lines if "hosts done" in ln]
    assert progress and progress[0].startswith("    health    15/16 hosts done after ")
    assert progress[0].endswith("waiting for app09")
    assert re.match(r"<-- health    16/16 ok \d\.\d{3}s \(slowest app09 0\.3\d\ds\)", lines[-1])


def test_bench_cost_takes_the_worst_host_of_each_role() -> None:
    from bench.fleet import cost
    def row(role: str, commands: int, connections: int, files: int, tunnels: int
            ) -> dict[str, object]:
        return {"role": role, "commands": commands, "connections": connections,
                "file_ops": files, "tunnels": tunnels}
    rows = [row("app", 3, 1, 14, 13), row("app", 4, 1, 16, 12), row("traffic", 2, 1, 85, 9),
            row("app+traffic", 5, 2, 20, 14)]
    assert cost({"hosts": rows}) == {"rt_app": 5, "rt_traffic": 5, "connections": 2,
                                     "files_app": 20, "files_traffic": 85,
                                     "tunnels_app": 14, "tunnels_traffic": 14}
    assert cost({"hosts": rows[:3]}) == {"rt_app": 4, "rt_traffic": 2, "connections": 1,
                                         "files_app": 16, "files_traffic": 85,
                                         "tunnels_app": 13, "tunnels_traffic": 9}
