"""`traffic.router` and the [haproxy] section: defaults, and every bad value refused
before any host is touched, naming the file (or override), the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bluegreen import config
from bluegreen.errors import ConfigError
from bluegreen.routers import router_for
from bluegreen.routers.haproxy import HaproxyRouter
from bluegreen.testing import FakeWorld

MINIMAL = 'app = "shop"\nstart = "{release}/bin/runner {port}"\n'
HAPROXY = MINIMAL + '[traffic]\nrouter = "haproxy"\n'


def load(tmp_path: Path, text: str, **kw: object) -> config.Config:
    path = tmp_path / "bluegreen.toml"
    path.write_text(text)
    return config.load(path, environ=kw.pop("environ", {}), **kw)  # type: ignore[arg-type]


def test_nginx_stays_the_default_router(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert cfg.traffic.router == "nginx"
    assert cfg.drain_timeout == cfg.nginx.drain_timeout == 30.0
    assert type(router_for(cfg, FakeWorld().opener(cfg.primary, cfg))).__name__ != \
        "HaproxyRouter"


def test_haproxy_defaults_fit_debian(tmp_path: Path) -> None:
    cfg = load(tmp_path, HAPROXY + "[haproxy]\ndrain_timeout = 12\n[nginx]\ndrain_timeout = 3\n")
    h = cfg.haproxy
    assert (h.command, h.main_config, h.admin_socket, h.pid_file) == (
        "haproxy", "/etc/haproxy/haproxy.cfg", "/run/haproxy/admin.sock", "/run/haproxy.pid")
    assert cfg.haproxy_target == "/etc/haproxy/bluegreen/shop.cfg"
    assert cfg.haproxy_state_file == "/var/lib/haproxy/bluegreen-shop.state"
    assert (h.listen, h.transport, h.reload_command, h.check_interval) == ("80", "auto", "", "1s")
    assert cfg.drain_timeout == 12.0  # the router's own drain timeout, not nginx's
    assert isinstance(router_for(cfg, FakeWorld().opener(cfg.primary, cfg)), HaproxyRouter)


def test_router_from_the_environment(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL, environ={"BLUEGREEN__TRAFFIC__ROUTER": "haproxy",
                                           "BLUEGREEN__HAPROXY__LISTEN": "8080"})
    assert cfg.traffic.router == "haproxy" and cfg.haproxy.listen == "8080"


@pytest.mark.parametrize(("text", "key", "says"), [
    ('[traffic]\nrouter = "envoy"\n', "traffic.router", "expected nginx or haproxy"),
    ('[haproxy]\nadmin_sock = "/x"\n', "haproxy.admin_sock", "unknown key (known here: "),
    ('[haproxy]\nlisten = "80 ssl crt /x.pem"\n', "haproxy.listen", "without bind parameters"),
    ('[haproxy]\nlisten = "unix:/x"\n', "haproxy.listen", "unix sockets are not supported"),
    ('[haproxy]\nadmin_socket = "run/admin.sock"\n', "haproxy.admin_socket",
     "an absolute path (a unix socket"),
    ('[haproxy]\nadmin_socket = "ipv4@127.0.0.1:99999"\n', "haproxy.admin_socket",
     "ipv4@ADDRESS:PORT"),
    ('[haproxy]\ntransport = "netcat"\n', "haproxy.transport", "one of auto, socat"),
    ('[haproxy]\ncheck_interval = "1 s"\n', "haproxy.check_interval", "a haproxy duration"),
    ('[haproxy]\ndrain_timeout = -1\n', "haproxy.drain_timeout", ">= 0"),
    ('[haproxy]\ncommand = ""\n', "haproxy.command", "empty"),
])
def test_bad_values_name_the_key_and_what_is_expected(tmp_path: Path, text: str, key: str,
                                                      says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, (MINIMAL if text.startswith("[traffic]") else HAPROXY) + text)
    message = str(err.value)
    assert f": {key}: " in message and says in message, message
    assert str(tmp_path / "bluegreen.toml") in message


@pytest.mark.parametrize(("text", "key", "says"), [
    ('[haproxy]\ntarget = "/etc/haproxy/bluegreen/{app}.conf"\n', "haproxy.target",
     "ending in .cfg"),
    ('[haproxy]\ntarget = "bluegreen/{app}.cfg"\n', "haproxy.target", "absolute path"),
    ('[haproxy]\ntarget = "/etc/haproxy/{name}.cfg"\n', "haproxy.target",
     "only the {app} placeholder"),
    ('[haproxy]\nstate_file = "shop.state"\n', "haproxy.state_file", "absolute path"),
    ("[health]\npath = \"/it's\"\n", "health.path", "cannot hold a single quote"),
])
def test_what_haproxy_cannot_take_is_refused_only_for_the_haproxy_router(
        tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, HAPROXY + text)
    assert f": {key}: " in str(err.value) and says in str(err.value), str(err.value)
    load(tmp_path, MINIMAL + text)  # nginx does not care


def test_a_bad_override_is_blamed_on_the_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, HAPROXY, overrides=["haproxy.target=/etc/haproxy/x.txt"])
    assert "--set haproxy.target" in str(err.value) and "ending in .cfg" in str(err.value)
