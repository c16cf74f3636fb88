"""The haproxy driver (bluegreen.routers.haproxy) against a scripted traffic host.

The host answers each script the driver sends with output recorded from a real haproxy
2.6.12 (tests/unit/fixtures/haproxy/: two app hosts web1 and web2, slots on 18181/18182,
backend `shop`), arranged the way our scripts print it. So these tests pin what the
driver sends, how many remote commands a switch costs, and how it reads every answer,
failures included; tests/integration/test_haproxy_fab.py runs the same scripts for real.
"""

from __future__ import annotations

import dataclasses
import io
import shlex
from pathlib import Path
from typing import IO

import pytest

from bluegreen import config
from bluegreen.config import HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.hosts import DryRunHost, Host, Result
from bluegreen.httpwire import HttpReply
from bluegreen.plan import Plan
from bluegreen.render import parse_marker
from bluegreen.routers import haproxy_api as api
from bluegreen.routers import router_for
from bluegreen.routers.base import Applied, ConfigRejected
from bluegreen.routers.haproxy import (
    MARK,
    NOT_SAVED,
    TEST_REJECTED,
    UNREACHABLE,
    HaproxyApplied,
    HaproxyRouter,
    Scripts,
    bind_address,
    config_files,
    read_change,
    restore_commands,
)
from bluegreen.traffic import TrafficChange, drain

FIXTURES = Path(__file__).parent / "fixtures" / "haproxy"
TARGET = "/etc/haproxy/bluegreen/shop.cfg"
STATE = "/var/lib/haproxy/bluegreen-shop.state"
NAMES = {"b1": "web1-18181-blue", "g1": "web1-18182-green", "b2": "web2-18181-blue",
         "g2": "web2-18182-green"}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def make_cfg(**haproxy: object) -> config.Config:
    return config.from_dict({
        "app": "shop", "start": "{release}/bin/run {port}",
        "hosts": {"app": [{"address": "10.0.0.1", "name": "web1"},
                          {"address": "10.0.0.2", "name": "web2"}],
                  "traffic": [{"address": "lb1"}]},
        "slots": {"blue": 18181, "green": 18182},
        "traffic": {"router": "haproxy"},
        "haproxy": {"listen": "127.0.0.1:8080", "verify_timeout": 0.3, **haproxy},
    })


# ---------------------------------------------------------------- recorded answers


def answer(text: str) -> str:
    """One CLI answer as haproxy ends it: an empty line."""
    return text.strip("\n") + "\n\n"


SILENT = "\n"  # a `set server` that worked answers nothing
BLUE_LIVE = fixture("show_servers_state_green_live.txt").replace(
    # the green_live dump with the slots' roles swapped: blue ready, green maint
    "-blue 127.0.0.1 0 1", "-blue 127.0.0.1 X").replace(
    "-green 127.0.0.1 2 4", "-green 127.0.0.1 0 1").replace("X", "2 4")
GREEN_LIVE_BLUE_DRAINING = fixture("show_servers_state_draining.txt")


def switch_output(before: str | None, after: str, *, commands: int = 8,
                  reloaded: bool = False) -> str:
    """What Scripts.change prints for a switch (with `before`): 8 commands by default,
    a state and a weight for each of the four servers."""
    first = MARK + " first\n" + answer(before or "Can't find backend.")
    if not reloaded:
        return first + SILENT * commands + answer(after)
    return (first + "No such backend.\n\n" * commands + answer("Can't find backend.")
            + MARK + " reload\nreloaded: worker 100 -> 200\n"
            + MARK + " again\n" + SILENT * commands + answer(after))


class ScriptedHost(Host):
    """A traffic host with files in memory whose commands answer from a queue per kind
    of script; every command is recorded. Its front door answers from `front_slot`."""

    def __init__(self, cfg: config.Config, label: str = "lb1") -> None:
        super().__init__(HostSpec(label), cfg)
        self.files: dict[str, bytes] = {}
        self.answers: dict[str, list[Result]] = {}
        self.ran: list[tuple[str, str, str]] = []  # (kind, says, script)
        self.front_slot = ""

    def queue(self, kind: str, stdout: str, rc: int = 0, stderr: str = "") -> None:
        self.answers.setdefault(kind, []).append(Result(kind, rc, stdout, stderr))

    @staticmethod
    def kind_of(script: str) -> str:
        if "nothing to reload" in script:
            return "reload-only"
        if "left $((" in script:
            return "drain"
        if "haproxy -c -f" in script:
            return "test+switch" if MARK in script else "test"
        if MARK in script:
            return "change"
        return "read"

    def run(self, command: str, *, timeout: float | None = None, check: bool = True,
            mutates: bool = True, hint: str = "", says: str = "") -> Result:
        kind = self.kind_of(command)
        self.ran.append((kind, says, command))
        queue = self.answers.get(kind)
        assert queue, f"no answer queued for a {kind} script: {says}"
        return queue.pop(0)

    def mutating(self) -> list[str]:
        return [kind for kind, _, _ in self.ran if kind != "read"]

    # files
    def _exec(self, command: str, timeout: float) -> Result:  # pragma: no cover
        raise AssertionError("run() is scripted")

    def put(self, local: Path, remote: str) -> None:  # pragma: no cover
        self.files[remote] = local.read_bytes()

    def _open(self, path: str, mode: str) -> IO[bytes]:
        if "r" in mode:
            if path not in self.files:
                raise FileNotFoundError(path)
            return io.BytesIO(self.files[path])
        files = self.files

        class Writer(io.BytesIO):
            def close(self) -> None:
                files[path] = self.getvalue()
                super().close()
        return Writer()

    def _mkdir(self, path: str) -> None:
        self.files.setdefault(path, b"")

    def _size(self, path: str) -> int:
        if path not in self.files:
            raise FileNotFoundError(path)
        return len(self.files[path])

    def _rename(self, src: str, dst: str) -> None:
        self.files[dst] = self.files.pop(src)

    def _remove(self, path: str, *, directory: bool = False) -> None:
        del self.files[path]

    def _chmod(self, path: str, mode: int) -> None:
        pass

    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET") -> HttpReply:
        assert (address, port) == ("127.0.0.1", 8080), "the front door is haproxy.listen"
        if not self.front_slot:
            raise ConnectionRefusedError("nothing on the front door")
        return HttpReply(200, {"x-bluegreen-slot": self.front_slot}, b"ok")


def router(cfg: config.Config | None = None) -> tuple[HaproxyRouter, ScriptedHost]:
    cfg = cfg or make_cfg()
    host = ScriptedHost(cfg)
    r = router_for(cfg, host)
    assert isinstance(r, HaproxyRouter)
    return r, host


def installed(r: HaproxyRouter, host: ScriptedHost, slot: str) -> str:
    text = r.render(slot, f"r-{slot}", "v", 0)
    host.files[TARGET] = text.encode()
    return text


# ---------------------------------------------------------------- config and values


def test_haproxy_values_from_config() -> None:
    cfg = make_cfg()
    assert cfg.haproxy_target == TARGET and cfg.haproxy_state_file == STATE
    assert config_files(cfg) == ["/etc/haproxy/haproxy.cfg", TARGET]
    # a main "config" that is the directory holding ours: haproxy would load it twice
    assert config_files(make_cfg(main_config="/etc/haproxy/bluegreen")) == [
        "/etc/haproxy/bluegreen"]
    scripts = Scripts.of(cfg)
    assert [s.name for s in scripts.servers] == [NAMES["b1"], NAMES["g1"], NAMES["b2"],
                                                 NAMES["g2"]]


@pytest.mark.parametrize(("listen", "bind"), [
    ("80", ":80"), ("127.0.0.1:8080", "127.0.0.1:8080"), ("*:80", ":80"),
    ("[::1]:8080", "ipv6@::1:8080"), ("[::]:80", "ipv6@:::80"), ("lb.example:80", "lb.example:80")])
def test_listen_becomes_a_haproxy_bind(listen: str, bind: str) -> None:
    assert bind_address(listen) == bind


def test_the_rendered_file_is_included_mode_with_the_configured_pieces() -> None:
    r, _ = router(make_cfg(check_interval="250ms"))
    text = r.render("green", "r7", "v7", 123)
    marker = parse_marker(text)
    assert marker is not None and (marker.slot, marker.port, marker.release) == \
        ("green", 18182, "r7")
    assert "\nglobal" not in text  # the main config owns global and the admin socket
    assert "bind 127.0.0.1:8080" in text
    assert f"server-state-file-name {STATE}" in text
    assert "server web1-18182-green 10.0.0.1:18182\n" in text
    assert "server web1-18181-blue 10.0.0.1:18181 disabled" in text
    assert "inter 250ms" in text


def test_a_value_haproxy_cannot_hold_is_a_render_error_not_a_traceback() -> None:
    # the config refuses a quote in health.host_header; a value that slips past it anyway
    # still stops at rendering, before any host is touched
    cfg = make_cfg()
    cfg = dataclasses.replace(cfg, health=dataclasses.replace(cfg.health, host_header="it's"))
    r, host = router(cfg)
    with pytest.raises(BluegreenError) as err:
        r.render("blue", "r1", "v", 0)
    assert err.value.phase == "render" and "quote" in err.value.what and host.ran == []


def test_every_value_in_a_script_is_quoted() -> None:
    cfg = make_cfg(admin_socket="/run/my haproxy/admin.sock", pid_file="/run/h $(id).pid",
                   state_file="/var/lib/h/{app} `x`.state", command="sudo haproxy")
    s = Scripts.of(cfg)
    script = s.change(["set server shop/web1-18182-green state ready"], reload="always",
                      before=True)
    assert "'/var/lib/h/shop `x`.state'" in script
    assert "'/run/h $(id).pid'" in script
    assert "UNIX-CONNECT:'/run/my haproxy/admin.sock'" in script
    assert "`x`.state\"" not in script and " $(id).pid " not in script
    assert s.test().startswith("bg_out=$(sudo haproxy -c -f /etc/haproxy/haproxy.cfg -f "
                               "/etc/haproxy/bluegreen/shop.cfg 2>&1)")
    # the script is valid shell, as a whole
    shlex.split(script, posix=True)


def test_a_plain_switch_is_one_cli_line_with_the_state_before_and_after() -> None:
    s = Scripts.of(make_cfg(transport="socat"))
    commands = api.switch_commands("shop", s.servers, "green")
    script = s.change(commands, reload="if-missing", before=True)
    line = "; ".join(["show servers state shop", *commands, "show servers state shop"])
    again = "; ".join([*commands, "show servers state shop"])
    assert script.count(f"printf '%s\\n' {shlex.quote(line)}") == 1
    # the commands again only after a reload, which only runs when a server is missing
    assert script.index("bg_need=$(awk") < script.index("kill -USR2") < \
        script.index(f"printf '%s\\n' {shlex.quote(again)}")
    assert f"mv -f {STATE}.bluegreen.tmp {STATE}" in script
    never = s.change(commands, reload="never", before=False)
    assert "reload" not in never.replace("reload=", "") and never.count("socat") == 1


def test_restore_readies_before_it_drains_or_retires() -> None:
    assert restore_commands("shop", {"a-1-blue": "maint", "a-2-green": "drain",
                                     "b-1-blue": "ready"}) == [
        "set server shop/b-1-blue state ready", "set server shop/a-2-green state drain",
        "set server shop/a-1-blue state maint"]


# ---------------------------------------------------------------- reading a change


def test_read_change_gives_before_after_and_refusals() -> None:
    commands = api.switch_commands("shop", Scripts.of(make_cfg()).servers, "green")
    change = read_change(switch_output(BLUE_LIVE, GREEN_LIVE_BLUE_DRAINING, commands=4),
                         commands, "shop", before=True)
    assert change.before is not None and api.routed(change.before).slot == "blue"
    assert api.routed(change.after).slot == "green" and not change.reloaded
    refused = (MARK + " first\n" + answer(BLUE_LIVE) + SILENT + answer("No such server.")
               + SILENT * 2 + answer(GREEN_LIVE_BLUE_DRAINING))
    with pytest.raises(api.HaproxyError, match="refused `set server shop/web2-18182-green "
                                               "state ready`: No such server"):
        read_change(refused, commands, "shop", before=True)


def test_after_a_reload_only_the_second_line_counts() -> None:
    commands = api.switch_commands("shop", Scripts.of(make_cfg()).servers, "blue")
    change = read_change(switch_output(None, BLUE_LIVE, commands=4, reloaded=True), commands,
                         "shop", before=True)
    assert change.before is None and change.reloaded
    assert api.routed(change.after).slot == "blue"


# ---------------------------------------------------------------- the switch


def test_a_switch_costs_one_remote_command_on_one_traffic_host() -> None:
    cfg = make_cfg()
    r, host = router(cfg)
    installed(r, host, "blue")
    host.queue("test+switch", switch_output(BLUE_LIVE, GREEN_LIVE_BLUE_DRAINING))
    host.front_slot = "green"
    change = TrafficChange(cfg, [r], "green", "r2", "v2")
    change.apply()
    change.verify()
    assert host.mutating() == ["test+switch"]  # haproxy -c and the switch, one round trip
    assert "reload" not in host.ran[0][1]
    (_, applied), = change.applied
    assert isinstance(applied, HaproxyApplied)
    assert applied.flipped and not applied.reloaded
    assert applied.before == {NAMES["b1"]: "ready", NAMES["g1"]: "maint",
                              NAMES["b2"]: "ready", NAMES["g2"]: "maint"}
    assert parse_marker(host.files[TARGET].decode()).slot == "green"  # type: ignore[union-attr]
    change.commit()


def test_two_traffic_hosts_test_everywhere_then_switch_everywhere() -> None:
    cfg = make_cfg()
    (r1, h1), (r2, h2) = router(cfg), router(cfg)
    for r, h in ((r1, h1), (r2, h2)):
        installed(r, h, "blue")
        h.queue("test", "")
        h.queue("change", switch_output(BLUE_LIVE, GREEN_LIVE_BLUE_DRAINING))
    TrafficChange(cfg, [r1, r2], "green", "r2", "v2").apply()
    assert h1.mutating() == h2.mutating() == ["test", "change"]  # two commands each


def test_a_changed_shape_reloads_and_says_so_before_sending() -> None:
    cfg = make_cfg()
    r, host = router(cfg)
    installed(r, host, "blue")
    host.files[TARGET] = host.files[TARGET].replace(b"shape=", b"shape=0ld")
    applied = r.install(r.render("green", "r2", "v2", 0))
    host.queue("test+switch", switch_output(None, GREEN_LIVE_BLUE_DRAINING, reloaded=True))
    r.test(applied, and_apply=True)
    assert applied.reloaded and applied.flipped
    assert "the file's shape changed" in host.ran[0][1]
    assert "kill -USR2" in host.ran[0][2] and "bg_need=1" in host.ran[0][2]


def test_a_rejected_config_puts_the_file_back_and_sends_nothing() -> None:
    r, host = router()
    before = installed(r, host, "blue")
    applied = r.install(r.render("green", "r2", "v2", 0))
    host.queue("test+switch", fixture("config_test_bad.txt"), rc=TEST_REJECTED)
    with pytest.raises(ConfigRejected) as err:
        r.test(applied, and_apply=True)
    assert "unknown keyword 'bogus_keyword'" in err.value.what
    assert "Fatal errors" not in err.value.what
    assert host.files[TARGET].decode() == before
    assert not applied.flipped and not applied.reloaded
    assert host.mutating() == ["test+switch"]  # the restore only wrote the file


def test_nothing_on_the_admin_socket_is_said_and_only_the_file_goes_back() -> None:
    r, host = router()
    before = installed(r, host, "blue")
    applied = r.install(r.render("green", "r2", "v2", 0))
    host.queue("test+switch", MARK + " first\n",
               rc=UNREACHABLE)
    with pytest.raises(BluegreenError) as err:
        r.test(applied, and_apply=True)
    assert "does not answer on the admin socket /run/haproxy/admin.sock" in err.value.what
    assert "level admin" in err.value.hint
    assert not applied.flipped and not applied.reloaded
    r.restore(applied)
    assert host.files[TARGET].decode() == before and host.mutating() == ["test+switch"]


def test_a_switch_that_leaves_haproxy_elsewhere_fails() -> None:
    r, host = router()
    installed(r, host, "blue")
    applied = r.install(r.render("green", "r2", "v2", 0))
    host.queue("test+switch", switch_output(BLUE_LIVE, BLUE_LIVE))
    with pytest.raises(BluegreenError, match="routes to blue, not green"):
        r.test(applied, and_apply=True)
    assert applied.flipped  # sent: the undo must put the servers back


def test_a_state_file_that_cannot_be_written_fails_the_switch() -> None:
    r, host = router()
    installed(r, host, "blue")
    applied = r.install(r.render("green", "r2", "v2", 0))
    host.queue("test+switch", switch_output(BLUE_LIVE, GREEN_LIVE_BLUE_DRAINING), rc=NOT_SAVED,
               stderr="mv: cannot move: Permission denied")
    with pytest.raises(BluegreenError) as err:
        r.test(applied, and_apply=True)
    assert "Permission denied" in err.value.what and STATE in err.value.hint


def test_undo_puts_back_the_file_and_each_servers_state() -> None:
    cfg = make_cfg()
    r, host = router(cfg)
    before = installed(r, host, "blue")
    host.queue("test+switch", switch_output(BLUE_LIVE, GREEN_LIVE_BLUE_DRAINING))
    host.front_slot = "blue"  # the new slot never answers: verify fails
    change = TrafficChange(cfg, [r], "green", "r2", "v2")
    change.apply()
    with pytest.raises(BluegreenError, match="did not answer from slot green"):
        change.verify()
    host.queue("change", MARK + " first\n" + SILENT * 8 + answer(BLUE_LIVE))
    said = change.undo()
    assert "restored on lb1" in said
    assert host.files[TARGET].decode() == before
    kind, says, script = host.ran[-1]
    assert kind == "change" and "put haproxy back on blue" in says and "USR2" not in script
    # readies first: blue was ready, green maint; then the weights they had
    assert script.index(f"shop/{NAMES['b1']} state ready") < \
        script.index(f"shop/{NAMES['g1']} state maint") < \
        script.index(f"shop/{NAMES['g1']} weight 1")


def test_recovery_without_the_states_reloads_and_routes_to_the_previous_file() -> None:
    r, host = router()
    previous = installed(r, host, "blue")
    host.files[TARGET] = r.render("green", "r2", "v2", 0).encode()
    host.queue("change", switch_output(None, BLUE_LIVE, reloaded=True).replace(
        MARK + " first\n" + answer("Can't find backend."), MARK + " first\n"))
    r.restore(Applied(previous, reloaded=True, flipped=True))  # what recover_interrupted does
    _, says, script = host.ran[-1]
    assert host.files[TARGET].decode() == previous
    assert "(reload with the previous file)" in says
    assert f"shop/{NAMES['b1']} state ready" in script
    assert script.index(f"{NAMES['b2']} state ready") < script.index(f"{NAMES['g1']} state drain")


def test_undoing_a_first_deploy_removes_the_file_and_reloads_haproxy_without_it() -> None:
    r, host = router()
    applied = r.install(r.render("blue", "r1", "v1", 0))
    applied.reloaded = applied.flipped = True
    host.queue("reload-only", "reloaded: worker 1 -> 2\n")
    r.restore(applied)
    assert TARGET not in host.files and host.mutating() == ["reload-only"]


# ---------------------------------------------------------------- what it sees


def test_routed_is_what_haproxy_itself_routes_to() -> None:
    r, host = router()
    assert r.routed().slot == "" and host.ran == []  # no file: no question asked
    installed(r, host, "blue")
    host.queue("read", fixture("show_servers_state_draining.txt"))
    routed = r.routed()
    assert (routed.slot, routed.file_slot) == ("green", "blue")  # haproxy wins over the file
    assert routed.detail == ("haproxy's server states: blue draining, green ready (2 of 2 up)")
    assert (routed.weight, routed.preview) == (0, "")
    host.queue("read", "", rc=1, stderr="connect: No such file or directory")
    with pytest.raises(BluegreenError, match=r"did not answer on /run/haproxy/admin\.sock"):
        r.routed()
    assert all(kind == "read" for kind, _, _ in host.ran)  # status changes nothing


def test_a_backend_haproxy_never_loaded_routes_nowhere() -> None:
    r, host = router()
    installed(r, host, "green")
    host.queue("read", "Can't find backend.\n\n")
    routed = r.routed()
    assert (routed.slot, routed.file_slot) == ("", "green")
    assert "has not loaded backend shop" in routed.detail


def test_inflight_and_counters_from_show_stat() -> None:
    r, host = router()
    assert r.inflight(18181) is None  # nothing installed: drain by connections instead
    installed(r, host, "green")
    host.queue("read", fixture("show_stat_draining.csv"))
    assert r.inflight(18181) == 1
    host.queue("read", "", rc=1)
    assert r.inflight(18181) is None  # unreadable: the connection drain is the fallback
    host.queue("read", fixture("show_stat_draining.csv"))
    counters = r.counters()
    assert counters is not None
    assert counters["blue"].requests == 25 and counters["blue"].upstream_errors == 0
    assert counters["blue"].responses["5xx"] == 3


def test_drain_is_one_remote_loop_that_retires_the_slot() -> None:
    cfg = make_cfg(drain_timeout=7)
    r, host = router(cfg)
    installed(r, host, "green")
    host.queue("read", fixture("show_stat_draining.csv"))
    host.queue("drain", "left 0\n" + MARK + " first\n" + SILENT * 2
               + answer(fixture("show_servers_state_green_live.txt")))
    assert drain([r], 18181, cfg.drain_timeout) == {}
    assert host.mutating() == ["drain"]
    script = host.ran[-1][2]
    assert '[ "$bg_i" -ge 140 ]' in script  # 7 s in 50 ms steps, on the traffic host
    assert f"set server shop/{NAMES['b1']} state maint" in script
    assert f"shutdown sessions server shop/{NAMES['b1']}" in script  # only when some are left
    assert "green state maint" not in script  # the live slot is never retired
    host.queue("read", fixture("show_stat_draining.csv"))
    host.queue("drain", "left 2\n")
    assert drain([r], 18181, 7.0) == {"lb1": 2}


def test_a_canary_share_is_in_the_canary_servers_weight_after_they_leave_the_pool() -> None:
    r, _ = router()
    commands = r._route_commands("blue", 10)
    # the canary leaves the balanced pool (drain) before its weight carries the share
    assert commands.index(f"set server shop/{NAMES['g1']} state drain") < \
        commands.index(f"set server shop/{NAMES['g1']} weight 110")
    assert f"set server shop/{NAMES['b1']} weight 1" in commands


def test_a_dry_run_plans_the_switch_in_words_and_changes_nothing() -> None:
    cfg = make_cfg()
    inner = ScriptedHost(cfg)
    plan = Plan()
    r = router_for(cfg, DryRunHost(inner, plan))
    applied = r.install(r.render("green", "r2", "v2", 0))
    r.test(applied, and_apply=True)
    words = [s.words for s in plan.steps]
    assert any(w.startswith(f"write {TARGET}") for w in words)
    assert any("switch haproxy to green" in w for w in words)
    assert inner.ran == [] and TARGET not in inner.files



def test_undo_with_states_of_servers_the_previous_file_lacks_goes_to_its_slot() -> None:
    r, host = router()
    previous = installed(r, host, "blue")
    applied = HaproxyApplied(previous, flipped=True, text="",
                             before={"gone-1-blue": "ready", "gone-2-green": "maint"})
    host.queue("change", MARK + " first\n" + SILENT * 8 + answer(BLUE_LIVE))
    r.restore(applied)
    script = host.ran[-1][2]
    assert "gone-" not in script  # a server haproxy would not know after the undo
    assert f"shop/{NAMES['b1']} state ready" in script and \
        f"shop/{NAMES['g2']} state drain" in script


def test_a_preview_route_is_rendered_and_asked_for_only_where_one_is_configured() -> None:
    r, host = router()
    assert "map_str(" not in r.render("blue", "r1", "v1", 0)  # no map file to need
    installed(r, host, "blue")
    host.queue("read", BLUE_LIVE)
    r.set_preview(None)  # nothing configured: nothing to remove, nothing sent
    assert host.mutating() == []
    with pytest.raises(BluegreenError, match="no preview route without a token"):
        r.set_preview("green", "a" * 40)
    cfg = make_cfg()
    cfg = dataclasses.replace(cfg, preview=dataclasses.replace(cfg.preview,
                                                               token_env="BG_PREVIEW"))
    r, host = router(cfg)
    text = r.render("blue", "r1", "v1", 0)
    assert f"map_str({r.preview_map})" in text and r.preview_map.endswith("/shop-preview.map")
    r.install(text)
    assert host.files[r.preview_map] == b""  # created empty: haproxy -c needs it
    host.queue("read", answer(BLUE_LIVE) + answer(f"0x55d0 {'a' * 40} green"))
    assert r.routed().preview == ""  # green is in maint: the route leads nowhere yet
