"""The nginx shapes against real nginx: auto mode with and without the lua module, the
include-only integration behind a user's own TLS server block (locally and over SSH), and
WebSockets through nginx across repeated deploys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bluegreen import config
from bluegreen.hosts import LocalHost
from bluegreen.render import is_lua_config
from bluegreen.routers import lua_probe_script, parse_lua_probe
from testkit.nginx import PrivateNginx
from testkit.ports import free_port
from testkit.project import Project, ssh_toml
from testkit.shapes import (
    Cert,
    drop_nginx_keys,
    include_tls_keys,
    make_cert,
    set_nginx_keys,
    user_tls_server,
)
from testkit.sshd import TestSshd

pytestmark = pytest.mark.integration


def nginx_for(request: pytest.FixtureRequest, lua: bool) -> PrivateNginx:
    return request.getfixturevalue("private_nginx_lua" if lua else "private_nginx")


def project_without_mode(tmp_path: Path, nginx: PrivateNginx, artifacts: dict[str, Path],
                         hosts_toml: str = 'app = ["local"]', ssh: str = "") -> Project:
    """A project that never says nginx.mode: the default decides. Its control port is a
    free one (the default port could be taken by another test run on this machine)."""
    proj = Project(tmp_path / "app", nginx, artifacts, hosts_toml, ssh_toml=ssh).write()
    toml = proj.dir / "bluegreen.toml"
    drop_nginx_keys(toml, "mode", "control_port")
    set_nginx_keys(toml, control_port=str(free_port()))
    assert "\nmode" not in toml.read_text().split("[nginx]")[1]
    return proj


# ---------------------------------------------------------------- auto mode


@pytest.mark.parametrize("lua", [True, False], ids=["lua-loaded", "plain"])
def test_probe_reads_the_real_nginx(request: pytest.FixtureRequest, lua: bool) -> None:
    nginx = nginx_for(request, lua)
    cfg = config.from_dict({"app": "a", "start": "x {port}"})
    host = LocalHost(config.HostSpec("local"), cfg)
    result = host.run(lua_probe_script(nginx.cmd_prefix), check=False)
    found = parse_lua_probe(result.stdout)
    assert found.lua is lua, (found, result.stdout[-500:])


@pytest.mark.parametrize("shape", ["lua-loaded", "lua-modules-enabled", "plain"])
def test_probe_before_the_first_include_deploy_reads_the_main_config(
        request: pytest.FixtureRequest, tmp_path: Path, shape: str) -> None:
    """The README's include-only setup: the user's server includes bluegreen's snippets
    before the first deploy writes them, so `nginx -T` fails; the probe then reads the
    main config (and, Debian's way, the modules-enabled/ files it includes)."""
    lua = shape != "plain"
    nginx = nginx_for(request, lua)
    if shape == "lua-modules-enabled":
        main = nginx.conf.read_text()
        loads = [line for line in main.splitlines() if line.startswith("load_module")]
        (nginx.prefix / "modules-enabled").mkdir()
        (nginx.prefix / "modules-enabled" / "50-mod-http-lua.conf").write_text(
            "\n".join(loads) + "\n")
        nginx.conf.write_text("\n".join(
            ["include modules-enabled/*.conf;",  # relative: to nginx.conf's directory
             *(line for line in main.splitlines() if not line.startswith("load_module"))]))
    snippets = nginx.conf_dir / "demo"
    nginx.write_conf_d("site.conf", user_tls_server(snippets, make_cert(tmp_path / "tls"),
                                                    free_port()))
    own = (f"{snippets}.server", f"{snippets}.location")
    cfg = config.from_dict({"app": "a", "start": "x {port}"})
    host = LocalHost(config.HostSpec("local"), cfg)
    result = host.run(lua_probe_script(nginx.cmd_prefix, own), check=False)
    assert "--- rc 1" in result.stdout, result.stdout[-800:]  # -T did fail
    found = parse_lua_probe(result.stdout, own)
    assert found.lua is lua, (found, result.stdout[-800:])
    if lua:
        assert f"{snippets}.server" in found.why
    assert parse_lua_probe(result.stdout).lua is False  # without our files: unknown, as before


@pytest.mark.parametrize("lua", [True, False], ids=["lua-loaded", "plain"])
def test_no_mode_set_switches_without_reload_only_where_lua_is_loaded(
        request: pytest.FixtureRequest, tmp_path: Path, artifacts: dict[str, Path],
        lua: bool) -> None:
    nginx = nginx_for(request, lua)
    proj = project_without_mode(tmp_path, nginx, artifacts)
    proj.deploy("v1")
    proj.deploy("v2")
    workers = sorted(nginx.worker_pids())
    out = proj.fab("switch").stdout
    assert proj.front_version() == "v1"
    reloaded = sorted(nginx.worker_pids()) != workers
    assert reloaded is not lua
    notices = [line for line in out.splitlines() if "keep-alive clients may see a reset" in line]
    if lua:
        assert notices == [] and "/bluegreen/live" in (nginx.conf_dir / "demo.conf").read_text()
    else:
        assert len(notices) == 1 and "libnginx-mod-http-lua" in notices[0]
    assert proj.status()["consistent"]


# ---------------------------------------------------------------- include-only, over TLS


@dataclass
class TlsSite:
    proj: Project
    cert: Cert
    port: int

    def get(self, path: str = "/") -> requests.Response:
        return requests.get(f"https://127.0.0.1:{self.port}{path}", verify=str(self.cert.cert),
                            timeout=5)

    def version(self) -> str:
        r = self.get()
        assert r.status_code == 200, r.text
        return r.headers["X-App-Version"]


@pytest.fixture(params=["local-lua", "ssh-lua", "ssh-reload"])
def tls_site(request: pytest.FixtureRequest, tmp_path: Path, artifacts: dict[str, Path]
             ) -> Iterator[TlsSite]:
    where, mode = request.param.split("-")
    nginx = nginx_for(request, mode == "lua")
    cert = make_cert(tmp_path / "tls")
    if where == "local":
        proj = project_without_mode(tmp_path, nginx, artifacts)
    else:
        sshd: TestSshd = request.getfixturevalue("sshd")
        proj = project_without_mode(tmp_path, nginx, artifacts,
                                    f'app = ["127.0.0.1:{sshd.port}"]', ssh_toml(sshd))
    port = free_port()
    site = TlsSite(proj, cert, port)
    # the user's server exists before bluegreen's snippets do: nginx only reads it at the
    # first switch, when bluegreen has written them
    nginx.write_conf_d("site.conf", user_tls_server(nginx.conf_dir / "demo", cert, port))
    # ssh-reload: the loopback-only opt-out of certificate checks
    keys = include_tls_keys(cert, port, verify=request.param != "ssh-reload")
    set_nginx_keys(proj.dir / "bluegreen.toml", **keys)
    try:
        yield site
    finally:
        proj.stop_everything()


def test_include_only_behind_the_users_tls_server(tls_site: TlsSite) -> None:
    proj, nginx = tls_site.proj, tls_site.proj.nginx
    out = proj.deploy("v1").stdout
    assert "verify" in out and tls_site.version() == "v1"
    # already the first deploy (whose snippets the user's server includes before they
    # exist) renders what this nginx can run: no shape change, so no reload, at the second
    assert is_lua_config((nginx.conf_dir / "demo.conf").read_text()) is nginx.lua
    proj.deploy("v2")
    r = tls_site.get()
    assert r.headers["X-App-Version"] == "v2" and r.headers["X-Bluegreen-Slot"] == "green"
    assert tls_site.get("/elsewhere").text == "the user's own location\n"  # untouched
    # bluegreen wrote only its own pieces; the user's server block is the user's
    ours = [(nginx.conf_dir / f"demo.{ext}").read_text() for ext in ("conf", "server", "location")]
    assert not any(f":{tls_site.port}" in text or "ssl" in text for text in ours)
    assert (nginx.conf_dir / "demo.location").exists() and (nginx.conf_dir / "demo.server").exists()
    lua = "/bluegreen/live" in (nginx.conf_dir / "demo.conf").read_text()
    assert lua is nginx.lua
    workers = sorted(nginx.worker_pids())
    proj.fab("switch")
    assert tls_site.version() == "v1"
    if lua:
        assert sorted(nginx.worker_pids()) == workers  # no reload behind a TLS server either
    st = proj.status()
    assert st["live"] == "blue" and st["consistent"], st
    (traffic,) = st["traffic_hosts"].values()
    assert traffic["routes_to"] == "blue"
    proj.fab("rollback")
    assert tls_site.version() == "v2"
    if lua:  # every counted request was uncounted (the server snippet's log phase)
        for _ in range(5):
            tls_site.get("/")
        control = int(next(line.split("=")[1] for line in
                           (proj.dir / "bluegreen.toml").read_text().splitlines()
                           if line.startswith("control_port")))
        zone = requests.get(f"http://127.0.0.1:{control}/bluegreen/status",
                            headers={"Host": "bluegreen-demo"}, timeout=5).json()
        assert set(zone["inflight"].values()) == {0}, zone


def test_a_certificate_that_does_not_match_fails_the_check_and_restores(
        tls_site: TlsSite) -> None:
    if tls_site.proj.nginx.lua is False:
        pytest.skip("the reload variant does not verify certificates (tls_verify = false)")
    proj = tls_site.proj
    proj.deploy("v1")
    proj.deploy("v2")
    proc = proj.fab("switch", "--set", 'nginx.server_name="other.test"',
                    "--set", "nginx.verify_timeout=1", check=False)
    assert proc.returncode == 1 and "phase=verify" in proc.stderr
    assert "https://127.0.0.1" in proc.stderr and "certificate" in proc.stderr.lower()
    assert "restored" in proc.stderr
    assert tls_site.version() == "v2"
    assert proj.status()["consistent"]


# ---------------------------------------------------------------- WebSockets


@dataclass
class LongLived:
    """One WebSocket held open, sending a message every 50 ms, recording every answer."""

    url: str
    answers: list[tuple[float, str]] = field(default_factory=list)
    closed_at: float = 0.0
    closed_how: str = ""
    hello: str = ""

    def start(self) -> LongLived:
        ready = threading.Event()

        def run() -> None:
            with connect(self.url, open_timeout=5) as ws:
                self.hello = str(ws.recv(timeout=5))
                ready.set()
                i = 0
                while True:
                    try:
                        ws.send(f"n{i}")
                        self.answers.append((time.monotonic(), str(ws.recv(timeout=10))))
                    except ConnectionClosed as exc:
                        self.closed_at, self.closed_how = time.monotonic(), repr(exc)
                        return
                    i += 1
                    time.sleep(0.05)
        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10), "the WebSocket did not open"
        return self


@dataclass
class Handshakes:
    """New WebSockets, one after another, each: open, hello, one echo, close."""

    url: str
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with connect(self.url, open_timeout=5) as ws:
                    ws.recv(timeout=5)
                    ws.send("hi")
                    ws.recv(timeout=5)
                self.ok += 1
            except Exception as exc:  # any failure is what this counts
                self.failed.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)


@pytest.mark.parametrize("lua", [True, False], ids=["lua", "reload"])
def test_websockets_across_repeated_deploys(request: pytest.FixtureRequest, tmp_path: Path,
                                            artifacts: dict[str, Path], lua: bool) -> None:
    nginx = nginx_for(request, lua)
    proj = project_without_mode(tmp_path, nginx, artifacts)
    drain = 2.0
    set_nginx_keys(proj.dir / "bluegreen.toml", drain_timeout=str(drain))
    url = f"ws://127.0.0.1:{nginx.port}/ws"
    try:
        proj.deploy("v1")
        handshakes = Handshakes(url)
        loop = threading.Thread(target=handshakes.run, daemon=True)
        loop.start()
        old = LongLived(url).start()
        assert old.hello == "hello v1 blue"
        proj.deploy("v2")  # traffic to green; the old socket stays on blue, still answered
        time.sleep(0.3)
        after_switch = time.monotonic()
        newer = LongLived(url).start()
        assert newer.hello == "hello v2 green"
        began = time.monotonic()
        out = proj.deploy("v3").stdout  # replaces blue: drains it, then stops it
        assert "long-lived connection" in out and "closed at drain timeout" in out, out
        assert old.closed_at, "the old WebSocket was never closed"
        answered = [t for t, text in old.answers if text.startswith("v1 blue n")]
        assert answered and max(answered) > after_switch  # kept flowing after the switch
        # ... through the drain, until the drain timeout ended it
        assert old.closed_at - began >= drain and max(answered) - began >= drain * 0.8
        assert all(text.startswith("v1 blue ") for _, text in old.answers)
        assert not newer.closed_at  # the live slot's sockets are not touched
        proj.deploy("v4-unhealthy", "--set", "health.timeout=2", check=False)
        proj.deploy("v1")  # replaces green: its long-lived socket ends the same way
        assert newer.closed_at
        handshakes.stop.set()
        loop.join(10)
        assert handshakes.failed == [] and handshakes.ok > 20, handshakes
        assert proj.front_version() == "v1"
        if lua:
            zone_port = json.loads(proj.fab("status", "--json").stdout)["live"]
            assert zone_port == "green"
    finally:
        proj.stop_everything()


def test_two_apps_share_one_control_port_and_never_switch_each_other(
        private_nginx_lua: PrivateNginx, tmp_path: Path, artifacts: dict[str, Path]) -> None:
    """Like two apps left on the default control port: each control server answers only to
    its own name, so one app's switch reaches only its own zone."""
    control, other_door = free_port(), free_port()
    first = project_without_mode(tmp_path / "first", private_nginx_lua, artifacts)
    second = project_without_mode(tmp_path / "second", private_nginx_lua, artifacts)
    toml = second.dir / "bluegreen.toml"
    toml.write_text(toml.read_text().replace('app = "demo"', 'app = "other"'))
    set_nginx_keys(toml, listen=f'"127.0.0.1:{other_door}"', server_name='"other.test"')
    for proj in (first, second):
        set_nginx_keys(proj.dir / "bluegreen.toml", control_port=str(control))

    def zone(app: str) -> dict[str, object]:
        return requests.get(f"http://127.0.0.1:{control}/bluegreen/status",
                            headers={"Host": f"bluegreen-{app}"}, timeout=5).json()

    def second_version() -> str:
        return requests.get(f"http://127.0.0.1:{other_door}/", timeout=5).headers["X-App-Version"]
    try:
        for version in ("v1", "v2"):
            first.deploy(version)
            second.deploy(version)
        assert first.front_version() == "v2" and second_version() == "v2"
        first.fab("switch")
        assert first.front_version() == "v1" and second_version() == "v2"
        assert zone("demo")["app"] == "demo" and zone("demo")["live"] == first.blue
        assert zone("other")["app"] == "other" and zone("other")["live"] == second.green
        second.fab("rollback")
        assert first.front_version() == "v1" and second_version() == "v1"
    finally:
        first.stop_everything()
        second.stop_everything()
