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


# ---------------------------------------------------------------- bad input: a clear
# ConfigError naming the file (or override), the key and what is expected; never a
# traceback, never silent acceptance.


def test_config_file_with_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.toml"
    path.write_bytes(MINIMAL.encode() + b'[nginx]\nserver_name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert err.value.source == str(path) and err.value.line == 4
    assert "not UTF-8" in err.value.problem and "0xe9" in err.value.problem
    assert f"{path}:4:" in str(err.value)


def test_byte_order_mark_is_not_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert config.load(path, environ={}).app == "shop"


def test_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as err:
        config.load(tmp_path, environ={})
    assert err.value.source == str(tmp_path) and "--config" in err.value.problem


def test_missing_file_named_by_the_environment_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "bluegreen.toml"
    with pytest.raises(ConfigError, match="not found") as err:
        config.load(environ={"BLUEGREEN_CONFIG": str(missing)})
    assert err.value.source == str(missing) and "BLUEGREEN_CONFIG" in err.value.problem


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[health]\ntimeout = 5\npath = /health\n")
    with pytest.raises(ConfigError, match="not valid TOML at line 5") as err:
        config.load(path, environ={})
    assert err.value.line == 5 and f"{path}:5:" in str(err.value)


@pytest.mark.parametrize("text", [
    "app = " + "9" * 5000 + "\n",  # tomllib raises a plain ValueError for this one
    "app = " + "[" * 2000 + "]" * 2000 + "\n",  # and a RecursionError for this one
])
def test_absurd_toml_is_a_config_error_not_a_traceback(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, text), environ={})


def test_unix_socket_listen_is_refused_at_load_saying_what_is_supported(tmp_path: Path) -> None:
    text = MINIMAL + '[nginx]\nlisten = "unix:/run/shop.sock"\n'
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), environ={})
    assert err.value.key == "nginx.listen"
    assert "unix sockets are not supported" in err.value.problem
    assert "ADDRESS:PORT" in err.value.problem and "[IPv6]:PORT" in err.value.problem


@pytest.mark.parametrize("listen", ["127.0.0.1", "host:port", ":80", "[::1]", "", "localhost"])
def test_listen_forms_the_switch_cannot_verify_are_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, MINIMAL + f'[nginx]\nlisten = "{listen}"\n'), environ={})
    assert err.value.key == "nginx.listen" and "PORT" in err.value.problem


@pytest.mark.parametrize("listen, door", [
    ("8080", ("127.0.0.1", 8080)),
    (8080, ("127.0.0.1", 8080)),
    ("127.0.0.1:8443 ssl", ("127.0.0.1", 8443)),
    ("[::1]:80 default_server", ("::1", 80)),
    ("*:80", ("127.0.0.1", 80)),
])
def test_supported_listen_forms_load_and_give_a_front_door(tmp_path: Path, listen: object,
                                                           door: tuple[str, int]) -> None:
    from bluegreen.render import front_door

    value = f'"{listen}"' if isinstance(listen, str) else str(listen)
    cfg = config.load(write(tmp_path, MINIMAL + f"[nginx]\nlisten = {value}\n"), environ={})
    assert front_door(cfg.nginx.listen) == door


OUT_OF_RANGE = [
    ("[health]\nrequest_timeout = 0\n", "health.request_timeout", "> 0"),
    ("[health]\ntimeout = -1\n", "health.timeout", "> 0"),
    ("[health]\ninterval = 0\n", "health.interval", "> 0"),
    ("[health]\ntimeout = nan\n", "health.timeout", "finite"),
    ("[health]\ntimeout = inf\n", "health.timeout", "finite"),
    ("[health]\ntimeout = 1e300\n", "health.timeout", "<= 10000000"),
    ("[process]\nstop_timeout = -1\n", "process.stop_timeout", ">= 0"),
    ("[process]\nport_free_timeout = -0.5\n", "process.port_free_timeout", ">= 0"),
    ("[nginx]\ndrain_timeout = -1\n", "nginx.drain_timeout", ">= 0"),
    ("[nginx]\nverify_timeout = 0\n", "nginx.verify_timeout", "> 0"),
    ("[ssh]\nconnect_timeout = 0\n", "ssh.connect_timeout", "> 0"),
    ("[hooks]\ntimeout = -5\n", "hooks.timeout", "> 0"),
    ("[health]\nstatus = 999\n", "health.status", "100-599"),
    ("[health]\nstatus = 99\n", "health.status", "100-599"),
    ("[health]\nstatus = 99999999999999999999999\n", "health.status", "100-599"),
    ("[ssh]\nport = 99999\n", "ssh.port", "1-65535"),
    ("[ssh]\nport = 0\n", "ssh.port", "1-65535"),
    ("[slots]\nblue = 0\n", "slots.blue", "1-65535"),
    ("[slots]\ngreen = 65536\n", "slots.green", "1-65535"),
    ("[slots]\nblue = 8082\n", "slots.green", "different ports"),
    ('[hosts]\napp = ["deploy@app1:99999"]\n', "hosts.app[0]", "1-65535"),
    ('[hosts]\napp = [{address = "app1", port = 70000}]\n', "hosts.app[0].port", "1-65535"),
    ("[nginx]\ncontrol_port = 70000\n", "nginx.control_port", "1-65535"),
    ('[nginx]\nlisten = "127.0.0.1:99999"\n', "nginx.listen", "1-65535"),
    ('[health]\nhost_header = "shop\\r\\nX-Evil: 1"\n', "health.host_header", "one line"),
    ('[hosts]\napp = [{address = "app1", name = "a\\nb"}]\n', "hosts.app[0].name", "one line"),
    ('[hosts]\napp = [{address = ""}]\n', "hosts.app[0].address", "address"),
]


@pytest.mark.parametrize("extra, key, fragment", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_at_load(tmp_path: Path, extra: str, key: str,
                                                 fragment: str) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert (err.value.source, err.value.key) == (str(path), key)
    assert fragment in err.value.problem


def test_out_of_range_override_blames_the_override(tmp_path: Path) -> None:
    env = {"BLUEGREEN__HEALTH__STATUS": "999"}
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, MINIMAL), environ=env)
    assert err.value.source == "environment BLUEGREEN__HEALTH__STATUS"
    assert err.value.key == "health.status" and "100-599" in err.value.problem
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, MINIMAL), environ={}, overrides=["ssh.port=99999"])
    assert err.value.source == "--set ssh.port" and "1-65535" in err.value.problem


@pytest.mark.parametrize("override", ["health.timeout=" + "9" * 5000,
                                      "health.timeout=" + "[" * 2000])
def test_absurd_override_values_are_config_errors(tmp_path: Path, override: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, MINIMAL), environ={}, overrides=[override])
    assert err.value.source == "--set health.timeout"


def test_override_into_a_value_that_is_not_a_table_names_the_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="app is not a table") as err:
        config.load(write(tmp_path, MINIMAL), environ={}, overrides=["app.name=x"])
    assert err.value.source == "--set app.name"


@pytest.mark.parametrize("start", ["run {port.x}", "run {port[0]}", "run {0}", "run {"])
def test_start_template_with_bad_format_is_a_config_error(tmp_path: Path, start: str) -> None:
    with pytest.raises(ConfigError, match="placeholder") as err:
        config.load(write(tmp_path, f'app = "x"\nstart = "{start}"\n'), environ={})
    assert err.value.key == "start"


def test_secret_env_values_are_never_echoed(tmp_path: Path) -> None:
    text = MINIMAL + '[env]\nTOKEN = ["hunter2"]\n'
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), environ={})
    assert err.value.key == "env.TOKEN" and "hunter2" not in str(err.value)


# ---- check_label: --version and --who are one line of printable text

@pytest.mark.parametrize("value, named", [
    ("1.2\nlive slot: green", "newline"),
    ("v2\r", "carriage return"),
    ("alice\x1b[2J", "escape"),
    ("bob\x00", "NUL"),
    ("v1\u2028v2", "line separator"),
    ("eve\u202egnp.exe", "text-direction"),
    ("a\tb", "tab"),
])
def test_check_label_refuses_line_breaks_and_control_characters(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.check_label("--version", value)
    assert err.value.exit_code == 2 and err.value.source == "--version"
    assert named in err.value.problem and "one line" in err.value.problem
    rendered = str(err.value)
    assert "--version" in rendered and "phase=arguments" in rendered


@pytest.mark.parametrize("value", ["", "1.4.2", "v2-rc.1+build.7", "Zoë Ångström (ops)",
                                   "jenkins: demo #42", "部署"])
def test_check_label_returns_printable_labels_unchanged(value: str) -> None:
    assert config.check_label("--who", value) == value


# ---- every key, hostile values: a Config or a ConfigError, nothing else

def _leaf_keys(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    hints = get_type_hints(cls)
    keys: list[tuple[str, ...]] = []
    for f in fields(cls):
        if f.name in ("source", "base_dir"):
            continue
        if is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], (*prefix, f.name))
        else:
            keys.append((*prefix, f.name))
    return keys


HOSTILE: list[object] = ["", "x\ny", "a\x00b", "~nobody-here/x", "unix:/run/x.sock", "{",
                         "\x1b[2J", -1, 0, 1, 70000,
                         10**30, -0.5, 0.0, float("nan"), float("inf"), -float("inf"), 1e300,
                         True, [], ["x"], [1], {}, {"a": 1}]


def _assert_sane(cfg: config.Config) -> None:
    """What the rest of bluegreen relies on without checking again."""
    import math

    from bluegreen.render import front_door

    for section in (cfg.health, cfg.process, cfg.nginx, cfg.ssh, cfg.hooks, cfg.paths):
        for name, value in vars(section).items():
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0, name
            if isinstance(value, str):  # paths, commands, headers: one line each
                assert "\x00" not in value and "\n" not in value, name
    assert cfg.slots.blue != cfg.slots.green
    for port in (cfg.slots.blue, cfg.slots.green, cfg.ssh.port):
        assert 1 <= port <= 65535
    assert 100 <= cfg.health.status <= 599
    front_door(cfg.nginx.listen)
    cfg.start.format(release="r", port=1, slot="s", app="a", artifact="f", version="v")
    assert cfg.nginx_target
    for host in cfg.hosts.app + cfg.hosts.traffic:
        assert 0 <= host.port <= 65535 and "\n" not in host.label


@pytest.mark.parametrize("key", [".".join(k) for k in _leaf_keys(config.Config)])
def test_every_key_answers_hostile_values_with_a_config_error(key: str) -> None:
    import copy

    base = {"app": "shop", "start": "run {port}"}
    for value in HOSTILE:
        raw = copy.deepcopy(base)
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        try:
            cfg = config.from_dict(raw, source="mem.toml")
        except ConfigError as exc:
            assert exc.source == "mem.toml" and exc.key, (key, value)
            continue
        _assert_sane(cfg)


@pytest.mark.parametrize("field_name", ["address", "name", "user", "port", "root", "upstream"])
def test_every_host_key_answers_hostile_values_with_a_config_error(field_name: str) -> None:
    for value in [*HOSTILE, "deploy@h:99999", "a b"]:
        host = {"address": "app1", field_name: value}
        try:
            cfg = config.from_dict({"app": "shop", "start": "run {port}",
                                    "hosts": {"app": [host]}}, source="mem.toml")
        except ConfigError as exc:
            assert exc.key.startswith("hosts.app[0]"), (field_name, value)
            continue
        _assert_sane(cfg)
