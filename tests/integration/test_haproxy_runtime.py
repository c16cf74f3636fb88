"""The HAProxy pieces against a real haproxy (Debian's 2.6) and two real slot backends.

The config is rendered from nginx_templates/haproxy.cfg.j2; every runtime command goes
through the shell scripts of bluegreen.routers.haproxy_api run by bash, exactly what the
driver will send through `Host.run`, and every answer through its parsers.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bluegreen.render import parse_marker
from bluegreen.routers import haproxy_api as api
from bluegreen.routers.haproxy_render import HaproxySite, render
from testkit.haproxy import LoadLoop, PrivateHaproxy, SlotBackend
from testkit.procs import pid_alive, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    hap: PrivateHaproxy
    blue: SlotBackend
    green: SlotBackend
    site: HaproxySite

    @property
    def backend(self) -> str:
        return api.backend_name(self.site.app)

    @property
    def servers(self) -> list[api.Server]:
        return api.servers_for(self.site.app_hosts, self.site.ports)

    def sh(self, script: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        # What LocalHost.run does, minus the outer `timeout` wrapper.
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def ask(self, *commands: str, transport: str = "auto") -> str:
        done = self.sh(api.cli_script(self.site.admin_socket, commands, transport=transport))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def do(self, commands: list[str]) -> None:
        api.check_silent(commands, self.ask(*commands))

    def stats(self) -> list[api.ServerStat]:
        return api.parse_show_stat(self.ask(api.show_stat_command(self.backend)), self.backend)

    def states(self) -> list[api.ServerState]:
        return api.parse_servers_state(self.ask(api.show_servers_state_command(self.backend)),
                                       self.backend)

    def switch(self, slot: str) -> None:
        self.do(api.switch_commands(self.backend, self.servers, slot))

    def drain(self, old_slot: str, timeout: float) -> int:
        """Wait until the old slot has nothing in flight; return what was left."""
        deadline = time.monotonic() + timeout
        while True:
            left = api.inflight_by_slot(self.stats())[old_slot]
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def retire(self, live_slot: str, *, close_sessions: bool = False) -> None:
        self.do(api.retire_commands(self.backend, self.servers, live_slot,
                                    close_sessions=close_sessions))

    def front(self, path: str = "/") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.hap.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("X-Bluegreen-Slot") or ""
        finally:
            conn.close()

    def wait_front(self, slot: str, timeout: float = 5.0) -> None:
        wait_until(lambda: self.front() == (200, slot), timeout,
                   lambda: f"front door answers {self.front()}, expected slot {slot}")


def make_site(hap: PrivateHaproxy, blue: SlotBackend, green: SlotBackend) -> HaproxySite:
    return HaproxySite(
        app="shop", app_hosts=[("app1", "127.0.0.1")],
        ports={"blue": blue.port, "green": green.port},
        listen=f"127.0.0.1:{hap.port}",
        admin_socket=hap.admin_socket, state_file=str(hap.state_file),
        health_path="/health", check_interval="200ms")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    blue, green = SlotBackend("blue").start(), SlotBackend("green").start()
    hap = PrivateHaproxy(tmp_path / "haproxy")
    site = make_site(hap, blue, green)
    hap.write_config(render(site, "blue", "r1"))
    try:
        hap.start()
        yield Rig(hap, blue, green, site)
    finally:
        hap.stop()
        blue.stop()
        green.stop()


# ---------------------------------------------------------------- switching


@pytest.mark.slow
def test_twenty_runtime_switches_under_keepalive_load_fail_no_request(rig: Rig) -> None:
    rig.wait_front("blue")
    live = "blue"
    with LoadLoop(rig.hap.port, clients=2, post_clients=1) as load:
        wait_until(lambda: load.total > 50, 10, "load loop sent nothing")
        for _ in range(20):
            new = "green" if live == "blue" else "blue"
            rig.switch(new)
            rig.wait_front(new)
            assert rig.drain(live, timeout=5.0) == 0
            rig.retire(new)
            live = new
            time.sleep(0.1)  # let the load run on the new slot between switches
    print(f"\n20 runtime switches: {load.ok} requests answered, {len(load.failures)} failed "
          f"({dict(load.slots)})")
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: " \
                                f"{load.failures[:5]}"
    assert load.ok > 200
    assert load.slots["blue"] > 0 and load.slots["green"] > 0
    assert set(load.slots) <= {"blue", "green"}  # every answer named its slot
    assert api.routed_slot(rig.states()) == "blue"  # 20 switches: back where it started


def test_routed_slot_is_what_haproxy_itself_routes_to(rig: Rig) -> None:
    view = api.routed(rig.states())
    assert (view.slot, view.ready, view.draining) == ("blue", {"blue": 1, "green": 0},
                                                      {"blue": 0, "green": 0})
    wait_until(lambda: api.routed(rig.states()).healthy, 5, "blue never passed its check")

    rig.switch("green")
    view = api.routed(rig.states())
    assert view.slot == "green" and view.draining == {"blue": 1, "green": 0}
    rig.retire("green")
    assert {s.server: s.admin for s in rig.states()} == {
        f"app1-{rig.blue.port}-blue": "maint", f"app1-{rig.green.port}-green": "ready"}

    # Both ready (a switch cut off between its two commands, or a canary): "mixed".
    rig.do([api.set_state_command(rig.backend, s.name, "ready") for s in rig.servers])
    assert api.routed_slot(rig.states()) == "mixed"
    # Weight 0 takes a slot out without touching its admin state.
    rig.do(api.set_weight_commands(rig.backend, rig.servers, {"blue": 0}))
    assert api.routed_slot(rig.states()) == "green"
    # Nothing ready: every new request would get a 503, and the reader says so.
    rig.do([api.set_state_command(rig.backend, s.name, "maint") for s in rig.servers])
    assert api.routed_slot(rig.states()) == ""
    assert rig.front()[0] == 503


def test_drain_waits_for_inflight_requests_on_the_old_slot(rig: Rig) -> None:
    rig.wait_front("blue")
    result: dict[str, object] = {}

    def slow() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", rig.hap.port, timeout=10)
        conn.request("GET", "/slow?ms=1500")
        resp = conn.getresponse()
        result["answer"] = (resp.status, resp.getheader("X-Bluegreen-Slot"), resp.read())
        conn.close()

    worker = threading.Thread(target=slow)
    worker.start()
    wait_until(lambda: api.inflight_by_slot(rig.stats())["blue"] == 1, 5,
               "the slow request never showed up in blue's current sessions")

    rig.switch("green")
    rig.wait_front("green")  # new requests go to green while blue still works
    assert api.inflight_by_slot(rig.stats())["blue"] == 1
    assert rig.drain("blue", timeout=0.2) == 1  # a drain timeout reports what was left

    assert rig.drain("blue", timeout=5.0) == 0
    worker.join(timeout=5)
    assert result["answer"] == (200, "blue", b"blue")  # finished on the slot it started on
    rig.retire("green")
    assert api.routed(rig.states()).draining == {"blue": 0, "green": 0}


def test_drain_timeout_closes_long_lived_sessions(rig: Rig) -> None:
    rig.wait_front("blue")
    errors: list[str] = []

    # Stands in for a WebSocket that never ends by itself. A POST: haproxy re-sends a cut
    # GET to the new slot (retry-on empty-response), which hides the cut from the user
    # (see test_cut_idempotent_request_is_answered_by_the_new_slot); a POST never. A
    # request still waiting for its answer gets a 502; an upgraded tunnel is closed.
    def long_lived() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", rig.hap.port, timeout=20)
        try:
            conn.request("POST", "/slow?ms=15000", body=b"x")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(type(exc).__name__)
        finally:
            conn.close()

    worker = threading.Thread(target=long_lived)
    worker.start()
    wait_until(lambda: api.inflight_by_slot(rig.stats())["blue"] == 1, 5, "no session on blue")
    rig.switch("green")
    assert rig.drain("blue", timeout=0.3) == 1
    start = time.monotonic()
    rig.retire("green", close_sessions=True)
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - start < 5
    assert errors == ["HTTP 502"], "the long-lived request should be cut at the drain timeout"
    wait_until(lambda: api.inflight_by_slot(rig.stats())["blue"] == 0, 5, "blue kept a session")
    assert rig.front() == (200, "green")


def test_cut_idempotent_request_is_answered_by_the_new_slot(rig: Rig) -> None:
    rig.wait_front("blue")
    answers: list[tuple[int, str]] = []

    def long_get() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", rig.hap.port, timeout=20)
        conn.request("GET", "/slow?ms=1500")
        resp = conn.getresponse()
        resp.read()
        answers.append((resp.status, resp.getheader("X-Bluegreen-Slot") or ""))
        conn.close()

    worker = threading.Thread(target=long_get)
    worker.start()
    wait_until(lambda: api.inflight_by_slot(rig.stats())["blue"] == 1, 5, "no session on blue")
    rig.switch("green")
    rig.retire("green", close_sessions=True)
    worker.join(timeout=10)
    assert answers == [(200, "green")]
    assert rig.green.hits["/slow"] == 1 and rig.blue.hits["/slow"] == 1


# ---------------------------------------------------------------- reload and state file


def test_reload_with_state_file_keeps_the_switched_slot(rig: Rig) -> None:
    # The config on disk still says blue (it was rendered before the switch): only the
    # state file can bring green back after the reload.
    assert parse_marker(rig.hap.conf.read_text()).slot == "blue"  # type: ignore[union-attr]
    rig.switch("green")
    rig.retire("green")
    before = rig.hap.worker_pid()

    done = rig.sh(api.reload_script(rig.site.admin_socket, rig.backend,
                                    rig.site.state_file, str(rig.hap.pid_file), timeout=10))
    assert done.returncode == 0, done.stderr
    after = rig.hap.worker_pid()
    assert after != before and f"worker {before} -> {after}" in done.stdout
    assert rig.hap.state_file.read_text().startswith("1\n")
    assert api.routed_slot(rig.states()) == "green"
    rig.wait_front("green")

    # Without the state file the same reload comes back on the config's slot: it is the
    # file, not luck, that kept green.
    rig.hap.state_file.unlink()
    rig.hap.reload()
    assert api.routed_slot(rig.states()) == "blue"


@pytest.mark.slow
def test_ten_reloads_under_keepalive_load_fail_no_request(rig: Rig) -> None:
    # Switches never reload; a change of hosts or ports does. Without close-spread-time
    # this dropped 6 requests in 10 reloads (idle keep-alive connections closed at once).
    rig.switch("green")
    rig.retire("green")
    with LoadLoop(rig.hap.port, clients=2, post_clients=1) as load:
        wait_until(lambda: load.total > 50, 10, "load loop sent nothing")
        for _ in range(10):
            done = rig.sh(api.reload_script(rig.site.admin_socket, rig.backend,
                                            rig.site.state_file, str(rig.hap.pid_file)))
            assert done.returncode == 0, done.stderr
            time.sleep(0.3)
    print(f"\n10 reloads: {load.ok} requests answered, {len(load.failures)} failed")
    assert load.failures == [], f"{len(load.failures)} of {load.total} failed: " \
                                f"{load.failures[:5]}"
    assert set(load.slots) == {"green"}  # every new worker came up on the state file's slot


def _save_state(rig: Rig) -> None:
    done = rig.sh(api.save_state_script(rig.site.admin_socket, rig.backend,
                                        rig.site.state_file))
    assert done.returncode == 0, done.stderr


def test_rerendered_config_wins_over_a_stale_state_file(rig: Rig) -> None:
    # The driver re-renders the file on every switch. If the state dump after a switch
    # to green was lost (the file on disk says blue ready, green maint), haproxy follows
    # the config where the two disagree on `disabled`.
    rig.retire("blue")
    _save_state(rig)
    rig.switch("green")
    rig.retire("green")
    rig.hap.write_config(render(rig.site, "green", "r2"))
    rig.hap.reload()
    assert api.routed_slot(rig.states()) == "green"
    rig.wait_front("green")


def test_stale_drain_in_the_state_file_survives_a_config_change(rig: Rig) -> None:
    # A trap measured on haproxy 2.6: the config wins on `disabled`, but a `drain` from
    # the state file is applied on top. Dumped mid-switch back to blue (blue ready,
    # green draining) and then reloaded with a config that makes green live, NO server
    # takes new requests. So the driver must read routed_slot after every reload or
    # start and re-send the switch when it differs from the recorded slot; re-sending
    # repairs it at once.
    rig.switch("green")
    rig.retire("green")
    rig.switch("blue")
    _save_state(rig)  # blue ready, green drain
    rig.switch("green")
    rig.retire("green")
    rig.hap.write_config(render(rig.site, "green", "r2"))
    rig.hap.reload()
    assert api.routed(rig.states()).slot == ""
    assert rig.front()[0] == 503
    rig.switch("green")
    rig.retire("green")
    assert api.routed_slot(rig.states()) == "green"
    rig.wait_front("green")


def test_reload_of_a_config_the_master_rejects_keeps_the_old_worker(rig: Rig) -> None:
    rig.wait_front("blue")
    before = rig.hap.worker_pid()
    rig.hap.write_config(rig.hap.conf.read_text() + "\nbackend broken\n    bogus_keyword 1\n")
    done = rig.sh(api.reload_script(rig.site.admin_socket, rig.backend, rig.site.state_file,
                                    str(rig.hap.pid_file), timeout=2))
    assert done.returncode == 8, (done.stdout, done.stderr)
    assert "kept its old worker" in done.stderr
    assert rig.hap.worker_pid() == before and pid_alive(before or 0)
    assert rig.front() == (200, "blue")


def test_reload_refuses_a_stale_pid_file(rig: Rig, tmp_path: Path) -> None:
    stale = tmp_path / "stale.pid"
    stale.write_text("999999\n")
    done = rig.sh(api.reload_script(rig.site.admin_socket, rig.backend, rig.site.state_file,
                                    str(stale), timeout=2))
    assert done.returncode == 6 and "missing or stale" in done.stderr
    not_ours = tmp_path / "not-haproxy.pid"
    not_ours.write_text(f"{os.getpid()}\n")
    done = rig.sh(api.reload_script(rig.site.admin_socket, rig.backend, rig.site.state_file,
                                    str(not_ours), timeout=2))
    assert done.returncode == 6 and "is not haproxy" in done.stderr


def test_save_state_refuses_an_unknown_backend_and_keeps_the_old_file(rig: Rig) -> None:
    rig.hap.state_file.write_text("previous\n")
    done = rig.sh(api.save_state_script(rig.site.admin_socket, "nope", rig.site.state_file))
    assert done.returncode == 5 and "Can't find backend" in done.stderr
    assert rig.hap.state_file.read_text() == "previous\n"


# ---------------------------------------------------------------- counters


def test_show_stat_counters_grow_per_slot(rig: Rig) -> None:
    rig.wait_front("blue")
    before = api.slot_counters(rig.stats())
    for _ in range(10):
        assert rig.front() == (200, "blue")
    assert rig.front("/status/503") == (503, "blue")
    mid = api.slot_counters(rig.stats())
    assert mid["blue"].requests - before["blue"].requests >= 11
    assert mid["blue"].responses["2xx"] - before["blue"].responses["2xx"] >= 10
    assert mid["blue"].responses["5xx"] - before["blue"].responses["5xx"] == 1
    assert mid["green"].requests == before["green"].requests

    rig.switch("green")
    rig.retire("green")
    for _ in range(5):
        assert rig.front() == (200, "green")
    after = api.slot_counters(rig.stats())
    assert after["green"].requests - mid["green"].requests >= 5
    assert after["green"].errors == 0 and after["blue"].errors == 1
    assert after["blue"].inflight == 0


# ---------------------------------------------------------------- config test


def test_bad_config_fails_haproxy_c_with_its_message(rig: Rig) -> None:
    good = rig.sh(api.config_test_command(rig.hap.binary, [str(rig.hap.conf)]))
    assert good.returncode == 0, good.stdout
    broken = rig.hap.prefix / "broken.cfg"
    broken.write_text(rig.hap.conf.read_text().replace("balance roundrobin",
                                                        "balance roundrobin\n    bogus_keyword 1"))
    bad = rig.sh(api.config_test_command(rig.hap.binary, [str(broken)]))
    assert bad.returncode != 0
    alerts = api.parse_config_test(bad.stdout)
    assert alerts and "bogus_keyword" in alerts[0] and "broken.cfg" in alerts[0]


def test_template_with_many_hosts_and_ipv6_passes_haproxy_c(tmp_path: Path) -> None:
    site = HaproxySite(
        app="shop", app_hosts=[("web-1", "10.0.0.1"), ("web 2", "10.0.0.2"), ("v6", "::1")],
        ports={"blue": 8081, "green": 8082}, listen="127.0.0.1:18080",
        admin_socket=str(tmp_path / "admin sock"), state_file=str(tmp_path / "shop.state"),
        health_path="/up?full=1")
    conf = tmp_path / "haproxy.cfg"
    for slot in ("blue", "green"):
        conf.write_text(render(site, slot, "v1"))
        done = subprocess.run(["bash", "-c", api.config_test_command("haproxy", [str(conf)])],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stdout


# ---------------------------------------------------------------- transports


@pytest.mark.parametrize("transport", ["auto", "python3", "socat"])
def test_unix_socket_transports_reach_the_admin_socket(rig: Rig, transport: str) -> None:
    if transport == "socat" and shutil.which("socat") is None:
        pytest.skip("socat is not installed (the auto transport falls back to python3)")
    info = api.parse_show_info(rig.ask(api.SHOW_INFO, transport=transport))
    assert int(info["Pid"]) == rig.hap.worker_pid()


def test_tcp_admin_socket_through_bash_dev_tcp(tmp_path: Path) -> None:
    blue, green = SlotBackend("blue").start(), SlotBackend("green").start()
    hap = PrivateHaproxy(tmp_path / "haproxy", tcp_admin=True)
    site = make_site(hap, blue, green)
    assert site.admin_socket.startswith("ipv4@127.0.0.1:")
    hap.write_config(render(site, "blue", "r1"))
    try:
        hap.start()
        rig = Rig(hap, blue, green, site)
        assert "/dev/tcp/" in api.cli_script(site.admin_socket, [api.SHOW_INFO])
        info = api.parse_show_info(rig.ask(api.SHOW_INFO))
        assert int(info["Pid"]) == hap.worker_pid()
        rig.switch("green")
        assert api.routed_slot(rig.states()) == "green"
        rig.wait_front("green")
    finally:
        hap.stop()
        blue.stop()
        green.stop()


def test_missing_admin_socket_fails_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "-c", api.cli_script(str(tmp_path / "none.sock"),
                                                        [api.SHOW_INFO])],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "none.sock" in done.stderr or "No such file" in done.stderr
