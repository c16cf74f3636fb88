from pathlib import Path

import pytest

from bluegreen import config
from bluegreen.errors import ConfigError

MINIMAL = 'app = "shop"\nstart = "{release}/bin/runner {port}"\n'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bluegreen.toml"
    p.write_text(text)
    return p


def test_minimal_config_gets_sensible_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL), environ={})
    assert cfg.app == "shop"
    assert (cfg.slots.blue, cfg.slots.green) == (8081, 8082)
    assert [h.address for h in cfg.hosts.app] == ["local"]
    assert cfg.traffic_hosts == cfg.hosts.app
    assert cfg.ssh.accept_unknown_hosts is False
    assert cfg.nginx_target == "/etc/nginx/conf.d/shop.conf"


def test_unknown_key_names_file_key_and_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[health]\ntimout = 5\n")
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    msg = str(err.value)
    assert str(path) in msg and "health.timout" in msg and "timeout" in msg


def test_wrong_type_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"health\.timeout: expected a number"):
        config.load(write(tmp_path, MINIMAL + '[health]\ntimeout = "soon"\n'), environ={})


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start: required key is missing"):
        config.load(write(tmp_path, 'app = "x"\n'), environ={})


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        config.load(tmp_path / "nope.toml", environ={})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "app = \n"), environ={})


def test_env_and_cli_override_file_and_cli_wins(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[health]\ntimeout = 5\n")
    env = {"BLUEGREEN__HEALTH__TIMEOUT": "30", "BLUEGREEN__SLOTS__BLUE": "9001"}
    cfg = config.load(path, environ=env, overrides=["health.timeout=45"])
    assert cfg.health.timeout == 45.0
    assert cfg.slots.blue == 9001


def test_bad_override_names_the_override_not_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, MINIMAL), environ={}, overrides=["slots.blue=high"])
    assert "--set slots.blue" in str(err.value)
    with pytest.raises(ConfigError, match="environment BLUEGREEN__NGINX__MODE"):
        config.load(write(tmp_path, MINIMAL), environ={"BLUEGREEN__NGINX__MODE": "carrier-pigeon"})


def test_override_without_equals_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.load(write(tmp_path, MINIMAL), environ={}, overrides=["health.timeout"])


def test_hosts_from_strings_tables_and_comma_override(tmp_path: Path) -> None:
    text = MINIMAL + ('[hosts]\napp = ["deploy@app1:2222", {address = "10.0.0.2", '
                      'root = "/srv/b", name = "b"}]\ntraffic = ["lb1"]\n')
    cfg = config.load(write(tmp_path, text), environ={})
    a, b = cfg.hosts.app
    assert (a.user, a.address, a.port) == ("deploy", "app1", 2222)
    assert (b.address, b.root, b.label) == ("10.0.0.2", "/srv/b", "b")
    assert cfg.primary.address == "lb1"
    assert cfg.root_on(b) == "/srv/b/shop"
    cfg2 = config.load(write(tmp_path, MINIMAL), environ={}, overrides=['hosts.app="h1,h2"'])
    assert [h.address for h in cfg2.hosts.app] == ["h1", "h2"]


def test_host_table_with_unknown_key(tmp_path: Path) -> None:
    text = MINIMAL + '[hosts]\napp = [{address = "a", prot = 22}]\n'
    with pytest.raises(ConfigError, match=r"hosts\.app\[0\]\.prot"):
        config.load(write(tmp_path, text), environ={})


@pytest.mark.parametrize(("extra", "fragment"), [
    ("[slots]\nblue = 8081\ngreen = 8081\n", "different ports"),
    ("[slots]\nblue = 70000\n", "1-65535"),
    ('[process]\nbackend = "docker"\n', "plain, supervisor or systemd"),
    ('[process]\nbackend = "supervisor"\n', "supervisor_conf"),
    ('[health]\npath = "health"\n', "starting with /"),
    ("keep_releases = 1\n", "at least 2"),
    ('[env]\n"BAD-NAME" = "x"\n', "environment variable name"),
])
def test_semantic_errors(tmp_path: Path, extra: str, fragment: str) -> None:
    top, tables = (extra, "") if not extra.startswith("[") else ("", extra)
    with pytest.raises(ConfigError, match=fragment):
        config.load(write(tmp_path, MINIMAL + top + tables), environ={})


def test_start_template_with_unknown_placeholder(tmp_path: Path) -> None:
    text = 'app = "x"\nstart = "java -jar {jar} --server.port={port}"\n'
    with pytest.raises(ConfigError, match="placeholder"):
        config.load(write(tmp_path, text), environ={})


def test_parse_host_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        config.parse_host("user@host:port:extra")
    assert config.parse_host("[::1]:2200").address == "::1"


def test_env_overrides_keep_name_case_and_raw_value(tmp_path: Path) -> None:
    env = {"BLUEGREEN__ENV__API_KEY": "1e5", "BLUEGREEN__ENV__FLAG": "true"}
    cfg = config.load(write(tmp_path, MINIMAL), environ=env, overrides=["env.Token=0x1F"])
    assert cfg.env == {"API_KEY": "1e5", "FLAG": "true", "Token": "0x1F"}


def test_lua_mode_needs_ip_addresses(tmp_path: Path) -> None:
    text = MINIMAL + ('[hosts]\napp = ["deploy@app1.example.com"]\n'
                      '[nginx]\nmode = "lua"\ncontrol_port = 9000\n')
    with pytest.raises(ConfigError, match="upstream"):
        config.load(write(tmp_path, text), environ={})
    ok = text.replace('"deploy@app1.example.com"',
                      '{address = "app1.example.com", upstream = "10.0.0.5"}')
    assert config.load(write(tmp_path, ok), environ={}).nginx.mode == "lua"
