"""The pure runtime-API builders and parsers of bluegreen.routers.haproxy_api.

Parsers read outputs recorded from a real haproxy 2.6.12 (Debian 12) with two app hosts
(web1, web2) and slots on 18181/18182: tests/unit/fixtures/haproxy/. Builders are
compared as strings, kamal-style; the integration tests run them for real.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bluegreen.errors import BluegreenError
from bluegreen.routers import haproxy_api as api

FIXTURES = Path(__file__).parent / "fixtures" / "haproxy"
SERVERS = api.servers_for([("web1", "127.0.0.1"), ("web2", "127.0.0.1")],
                          {"blue": 18181, "green": 18182})


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------- names


def test_server_names_carry_host_port_and_slot() -> None:
    assert [s.name for s in SERVERS] == ["web1-18181-blue", "web1-18182-green",
                                         "web2-18181-blue", "web2-18182-green"]
    assert [api.slot_of(s.name) for s in SERVERS] == ["blue", "green", "blue", "green"]
    assert api.slot_of("some-other-server") == ""


def test_host_labels_are_cleaned_and_kept_unique() -> None:
    servers = api.servers_for([("web 1", "10.0.0.1"), ("web/1", "10.0.0.2"),
                               ("v6", "[2001:db8::1]")], {"blue": 8081, "green": 8082})
    names = [s.name for s in servers]
    assert names[:2] == ["web_1-8081-blue", "web_1-8082-green"]
    assert names[2:4] == ["web_1_1-8081-blue", "web_1_1-8082-green"]
    assert len(set(names)) == len(names)
    assert servers[4].endpoint == "ipv6@2001:db8::1:8081"
    assert servers[0].endpoint == "10.0.0.1:8081"


def test_names_that_could_smuggle_a_cli_command_are_refused() -> None:
    with pytest.raises(ValueError, match="backend name"):
        api.set_state_command("shop; shutdown sessions", "web1-18181-blue", "ready")
    with pytest.raises(ValueError, match="server state"):
        api.set_state_command("shop", "web1-18181-blue", "up")
    with pytest.raises(ValueError, match="newline"):
        api.cli_script("/run/a.sock", ["show info\nshow stat"])


# ---------------------------------------------------------------- switching


def test_switch_readies_the_target_before_draining_the_old_slot() -> None:
    assert api.switch_commands("shop", SERVERS, "green") == [
        "set server shop/web1-18182-green state ready",
        "set server shop/web2-18182-green state ready",
        "set server shop/web1-18181-blue state drain",
        "set server shop/web2-18181-blue state drain",
    ]


def test_retire_puts_the_old_slot_in_maint_and_cuts_only_when_asked() -> None:
    assert api.retire_commands("shop", SERVERS, "green", close_sessions=False) == [
        "set server shop/web1-18181-blue state maint",
        "set server shop/web2-18181-blue state maint",
    ]
    assert api.retire_commands("shop", SERVERS, "blue", close_sessions=True) == [
        "shutdown sessions server shop/web1-18182-green",
        "set server shop/web1-18182-green state maint",
        "shutdown sessions server shop/web2-18182-green",
        "set server shop/web2-18182-green state maint",
    ]


def test_weights_per_slot() -> None:
    assert api.set_weight_commands("shop", SERVERS, {"blue": 10, "green": 90}) == [
        "set server shop/web1-18181-blue weight 10",
        "set server shop/web1-18182-green weight 90",
        "set server shop/web2-18181-blue weight 10",
        "set server shop/web2-18182-green weight 90",
    ]
    assert api.set_weight_commands("shop", SERVERS, {"green": 0}) == [
        "set server shop/web1-18182-green weight 0", "set server shop/web2-18182-green weight 0"]
    with pytest.raises(ValueError, match="0-256"):
        api.set_weight_commands("shop", SERVERS, {"blue": 300})


def test_a_successful_batch_answers_one_empty_line_per_command() -> None:
    commands = api.switch_commands("shop", SERVERS, "green")
    assert api.split_answers(fixture("batch_switch_ok.txt"), 4) == ["", "", "", ""]
    api.check_silent(commands, fixture("batch_switch_ok.txt"))


def test_a_refused_command_is_named_with_haproxys_words() -> None:
    commands = ["set server shop/web1-18181-blue state ready",
                "set server shop/nope-1-blue state ready", "show servers state nope"]
    output = fixture("batch_with_errors.txt")
    assert api.split_answers(output, 3) == ["", "No such server.", "Can't find backend."]
    with pytest.raises(api.HaproxyError) as err:
        api.check_silent(commands, output)
    assert "`set server shop/nope-1-blue state ready`: No such server. (and 1 more)" in \
        err.value.what
    assert isinstance(err.value, BluegreenError) and err.value.hint


def test_a_short_answer_is_an_error_not_a_silent_success() -> None:
    with pytest.raises(api.HaproxyError, match="answered 1 of 3"):
        api.split_answers("\n", 3)
    with pytest.raises(api.HaproxyError, match="answered 0 of 1"):
        api.check_silent(["set server a/b-1-blue state ready"], "")


# ---------------------------------------------------------------- show stat


def test_show_stat_rows_per_server() -> None:
    stats = api.parse_show_stat(fixture("show_stat_draining.csv"))
    by_name = {s.server: s for s in stats}
    assert set(by_name) == {s.name for s in SERVERS}  # FRONTEND/BACKEND rows are skipped
    draining = by_name["web1-18181-blue"]
    assert (draining.slot, draining.status, draining.scur, draining.inflight) == \
        ("blue", "DRAIN", 1, 1)
    assert (draining.stot, draining.hrsp["2xx"], draining.hrsp["5xx"]) == (13, 10, 2)
    assert not draining.accepts_new
    assert by_name["web2-18182-green"].status == "UP 1/3"  # up, one check failed
    assert by_name["web2-18182-green"].accepts_new
    assert draining.raw["addr"] == "127.0.0.1:18181"


def test_slot_counters_sum_the_servers_of_each_slot() -> None:
    counters = api.slot_counters(api.parse_show_stat(fixture("show_stat_draining.csv")))
    blue, green = counters["blue"], counters["green"]
    assert (blue.requests, blue.responses["2xx"], blue.responses["4xx"],
            blue.responses["5xx"]) == (25, 20, 1, 3)
    assert blue.errors == 3 and blue.inflight == 1
    assert (green.requests, green.responses["2xx"], green.errors, green.inflight) == \
        (10, 10, 0, 0)
    assert api.inflight_by_slot(api.parse_show_stat(fixture("show_stat_draining.csv"))) == \
        {"blue": 1, "green": 0}


def test_slot_counters_without_servers_are_zero() -> None:
    counters = api.slot_counters([])
    assert counters["blue"].requests == 0 and counters["green"].rtime_avg_ms == 0


def test_show_stat_for_an_unknown_backend_is_an_error() -> None:
    with pytest.raises(api.HaproxyError, match="No such proxy"):
        api.parse_show_stat(fixture("show_stat_unknown_backend.txt"))


def test_show_stat_command_asks_for_servers_of_one_backend() -> None:
    assert api.show_stat_command("shop") == "show stat shop 4 -1"


def test_weight_zero_server_is_up_but_takes_nothing() -> None:
    stats = {s.server: s for s in api.parse_show_stat(fixture("show_stat_weights.csv"))}
    assert stats["web1-18182-green"].weight == 90
    assert stats["web2-18181-blue"].status == "MAINT" and not stats["web2-18181-blue"].accepts_new


# ---------------------------------------------------------------- show servers state


def test_servers_state_mid_switch_routes_to_the_new_slot_with_the_old_draining() -> None:
    states = api.parse_servers_state(fixture("show_servers_state_draining.txt"))
    assert {s.server: s.admin for s in states} == {
        "web1-18181-blue": "drain", "web1-18182-green": "ready",
        "web2-18181-blue": "drain", "web2-18182-green": "ready"}
    view = api.routed(states)
    assert (view.slot, view.ready, view.draining, view.healthy) == (
        "green", {"blue": 0, "green": 2}, {"blue": 2, "green": 0}, True)


def test_config_disabled_flag_alone_does_not_mean_maint() -> None:
    # green was `disabled` in the rendered config, then set ready: admin state 4 (CMAINT)
    states = {s.server: s for s in api.parse_servers_state(
        fixture("show_servers_state_green_live.txt"))}
    green = states["web1-18182-green"]
    assert green.admin_state == api.ADMF_CMAINT and green.admin == "ready"
    assert green.takes_new_requests
    assert states["web1-18181-blue"].admin == "maint"
    assert api.routed_slot(states.values()) == "green"


def test_weights_on_both_slots_read_as_mixed() -> None:
    states = api.parse_servers_state(fixture("show_servers_state_weights.txt"))
    assert {s.server: s.user_weight for s in states}["web1-18182-green"] == 90
    view = api.routed(states)
    assert view.slot == "mixed" and view.ready == {"blue": 1, "green": 2}


def test_servers_state_reads_columns_by_name_and_filters_the_backend() -> None:
    text = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
            "srv_uweight srv_iweight\n3 shop 1 a-1-blue 10.0.0.1 0 5 1 1\n"
            "4 other 1 b-1-green 10.0.0.2 2 0 1 1\n")
    states = api.parse_servers_state(text, backend="shop")
    assert [(s.server, s.admin, s.up, s.port) for s in states] == [("a-1-blue", "maint",
                                                                     False, 0)]
    assert api.routed(states).slot == ""


def test_servers_state_error_answer_is_an_error() -> None:
    with pytest.raises(api.HaproxyError, match="Can't find backend"):
        api.parse_servers_state("Can't find backend.\n\n")


def test_an_unhealthy_routed_slot_is_routed_but_not_healthy() -> None:
    text = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
            "srv_uweight srv_iweight\n3 shop 1 a-1-blue 10.0.0.1 0 0 1 1\n"
            "3 shop 2 a-2-green 10.0.0.1 2 5 1 1\n")
    view = api.routed(api.parse_servers_state(text))
    assert view.slot == "blue" and not view.healthy


# ---------------------------------------------------------------- show info, haproxy -c


def test_show_info_gives_the_worker_pid() -> None:
    info = api.parse_show_info(fixture("show_info.txt"))
    assert info["Pid"].isdigit() and info["Version"].startswith("2.6")
    with pytest.raises(api.HaproxyError):
        api.parse_show_info("Unknown command\n\n")


def test_config_test_command_quotes_every_file() -> None:
    assert api.config_test_command("sudo haproxy", ["/etc/haproxy/haproxy.cfg",
                                                    "/etc/haproxy/my app.cfg"]) == \
        "sudo haproxy -c -f /etc/haproxy/haproxy.cfg -f '/etc/haproxy/my app.cfg' 2>&1"


def test_config_test_alerts_lead_with_the_specific_line() -> None:
    alerts = api.parse_config_test(fixture("config_test_bad.txt"))
    assert alerts[0].endswith("parsing [/etc/haproxy/conf.d/shop.cfg:36] : unknown keyword "
                              "'bogus_keyword' in 'backend' section")
    assert not any("Fatal errors found" in a for a in alerts)
    assert api.parse_config_test(fixture("config_test_ok.txt")) == []


# ---------------------------------------------------------------- shell scripts


def test_unix_socket_transport_prefers_socat_then_python3() -> None:
    script = api.cli_script("/run/haproxy/admin sock", ["show info", "show stat"])
    assert script.startswith("if command -v socat")
    assert "UNIX-CONNECT:'/run/haproxy/admin sock'" in script
    assert '"$bg_py" -S -c' in script and "exit 69" in script
    # The line reaches both clients as one quoted word.
    assert "'show info; show stat'" in script


def test_forced_transports() -> None:
    socat = api.cli_script("/s.sock", ["show info"], transport="socat", timeout=3)
    assert socat == ("printf '%s\\n' 'show info' | timeout 3 socat -t 3 - "
                     "UNIX-CONNECT:/s.sock")
    python = api.cli_script("/s.sock", ["show info"], transport="python3")
    choose, run = python.split("; timeout ", 1)
    assert choose == "bg_py=python3; [ -x /usr/bin/python3 ] && bg_py=/usr/bin/python3"
    argv = shlex.split("timeout " + run)
    assert argv[:5] == ["timeout", "10", "$bg_py", "-S", "-c"]
    assert argv[6:] == ["/s.sock", "show info", "10"]
    with pytest.raises(ValueError, match="TCP admin socket"):
        api.cli_script("/s.sock", ["show info"], transport="bash-tcp")
    with pytest.raises(ValueError, match="unix admin socket"):
        api.cli_script("ipv4@127.0.0.1:9999", ["show info"], transport="socat")


def test_tcp_admin_socket_goes_through_bash_dev_tcp() -> None:
    script = api.cli_script("ipv4@127.0.0.1:9999", ["show info"])
    assert "exec 3<>/dev/tcp/127.0.0.1/9999" in script
    assert "printf '%s\\n' 'show info' >&3" in script
    with pytest.raises(ValueError, match="absolute path"):
        api.cli_script("relative.sock", ["show info"])


def test_save_state_writes_a_temp_file_and_renames_it() -> None:
    script = api.save_state_script("/run/h.sock", "shop", "/var/lib/bg/shop state")
    assert "> '/var/lib/bg/shop state.bluegreen.tmp'" in script
    assert script.endswith("mv -f '/var/lib/bg/shop state.bluegreen.tmp' "
                           "'/var/lib/bg/shop state'")
    assert "show servers state shop" in script and "exit 5" in script


def test_reload_checks_the_master_saves_state_signals_and_waits_for_a_new_worker() -> None:
    script = api.reload_script("/run/h.sock", "shop", "/var/lib/bg/shop.state",
                               "/run/haproxy.pid", timeout=5)
    order = [script.index(part) for part in (
        "before=$(bg_haproxy_pid)", "readlink", "PPid", "show servers state shop",
        'kill -USR2 "$m"', "exit 8")]
    assert order == sorted(order)
    assert "while [ $i -lt 100 ]" in script  # 5 s in 50 ms steps


def test_reload_with_a_command_of_its_own_skips_the_pid_file() -> None:
    script = api.reload_script("/run/h.sock", "shop", "/s", "/unused.pid",
                               reload_command="systemctl reload haproxy")
    assert "systemctl reload haproxy || exit $?" in script
    assert "/unused.pid" not in script and "kill -USR2" not in script


# ---------------------------------------------------------------- canary and preview


def _servers() -> list[api.Server]:
    return api.servers_for([("web1", "10.0.0.1"), ("web2", "10.0.0.2")],
                           {"blue": 8081, "green": 8082})


def test_a_canary_share_rides_in_the_weight_after_the_slot_left_the_pool() -> None:
    commands = api.route_commands("shop", _servers(), "blue", 25)
    assert commands == [
        "set server shop/web1-8081-blue state ready", "set server shop/web2-8081-blue state ready",
        "set server shop/web1-8082-green state drain",
        "set server shop/web2-8082-green state drain",
        "set server shop/web1-8082-green weight 125", "set server shop/web2-8082-green weight 125",
        "set server shop/web1-8081-blue weight 1", "set server shop/web2-8081-blue weight 1"]
    # no share: a plain switch, every weight back to plain
    plain = api.route_commands("shop", _servers(), "green")
    assert plain[:4] == api.switch_commands("shop", _servers(), "green")
    assert all(c.endswith(" weight 1") for c in plain[4:]) and len(plain) == 8
    with pytest.raises(ValueError, match="0-100"):
        api.route_commands("shop", _servers(), "blue", 101)


def _state(server: str, admin: int, weight: int) -> api.ServerState:
    return api.ServerState("shop", server, api.slot_of(server), "10.0.0.1", 8081,
                           api.OP_RUNNING, admin, weight, 1)


def test_the_share_haproxy_applies_is_read_from_the_drained_canary_weights() -> None:
    ready, drain, maint = 0, api.ADMF_FDRAIN, api.ADMF_FMAINT
    canary = [_state("a-8081-blue", ready, 1), _state("a-8082-green", drain, 130),
              _state("b-8082-green", drain, 110)]
    assert api.share_of(canary, "blue") == 10  # cut off half-way: the smaller share
    # a draining old slot (weight 1) or a canary weight in maint is no share
    assert api.share_of([_state("a-8081-blue", ready, 1), _state("a-8082-green", drain, 1)],
                        "blue") == 0
    assert api.share_of([_state("a-8081-blue", ready, 1), _state("a-8082-green", maint, 130)],
                        "blue") == 0


def test_the_preview_map_holds_one_digest_and_refuses_anything_else() -> None:
    digest = "a" * 40
    assert api.preview_map_commands("/var/lib/haproxy/shop-preview.map", digest, "green") == [
        "clear map /var/lib/haproxy/shop-preview.map",
        f"add map /var/lib/haproxy/shop-preview.map {digest} green"]
    assert api.preview_map_commands("/x/shop-preview.map", "", "") == [
        "clear map /x/shop-preview.map"]
    with pytest.raises(ValueError, match="40 lowercase hex"):
        api.preview_map_commands("/x/m.map", "not-a-digest; shutdown", "green")
    with pytest.raises(ValueError, match="map file"):
        api.preview_map_commands("/x/a map;.map", digest, "green")
    assert api.map_file_text(digest, "green") == f"{digest} green\n"
    shown = f"0x55d0c8a1e2b0 {digest} green\n"
    assert api.parse_show_map(shown) == {digest: "green"} and api.parse_show_map("") == {}
