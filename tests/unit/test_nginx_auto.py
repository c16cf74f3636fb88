"""nginx.mode = "auto": reading what nginx says about its lua module, choosing a router per
traffic host once per run, and the one line a reload-mode switch prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from bluegreen import config
from bluegreen.config import Config, HostSpec
from bluegreen.errors import CommandFailed
from bluegreen.hosts import Result
from bluegreen.routers import (
    FALLBACK_SPLIT,
    PROBE_SPLIT,
    lua_probe_script,
    parse_lua_probe,
    router_for,
    switch_notices,
)
from bluegreen.routers.nginx_lua import NginxLuaRouter
from bluegreen.routers.nginx_reload import NginxReloadRouter
from bluegreen.testing import FakeHost, FakeWorld
from tests.unit.flows.test_flows import Harness

DEBIAN_V = """nginx version: nginx/1.22.1
built with OpenSSL 3.0.11 19 Sep 2023
TLS SNI support enabled
configure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx --with-compat \
--with-http_ssl_module --with-http_geoip_module=dynamic --with-stream=dynamic
"""
OPENRESTY_V = """nginx version: openresty/1.21.4.3
built by gcc 12.2.0 (Debian 12.2.0-14)
configure arguments: --prefix=/usr/local/openresty/nginx --add-module=../ngx_devel_kit-0.3.3 \
--add-module=../echo-nginx-module-0.63 --add-module=../ngx_lua-0.10.26 --with-http_ssl_module
"""


def probe(version: str, load_lines: str, rc: int = 0) -> str:
    """What lua_probe_script prints: -V, the split line, -T's load_module lines, its rc."""
    return f"{version}{PROBE_SPLIT}\n{load_lines}--- rc {rc}\n"


# ---------------------------------------------------------------- the parser


def test_debian_module_loaded_through_modules_enabled_is_lua() -> None:
    lines = ("load_module modules/ndk_http_module.so;\n"
             "load_module modules/ngx_http_lua_module.so;\n")
    found = parse_lua_probe(probe(DEBIAN_V, lines))
    assert found.lua and "loads ngx_http_lua_module" in found.why


def test_quoted_absolute_load_module_path_is_lua() -> None:
    lines = ('load_module "/usr/lib/nginx/modules/ndk_http_module.so";\n'
             '    load_module "/usr/lib/nginx/modules/ngx_http_lua_module.so";\n')
    assert parse_lua_probe(probe(DEBIAN_V, lines)).lua


def test_no_load_module_line_is_not_lua() -> None:
    found = parse_lua_probe(probe(DEBIAN_V, "load_module modules/ngx_http_echo_module.so;\n"))
    assert not found.lua and "does not load" in found.why


def test_commented_out_load_module_is_not_lua() -> None:
    # grep on the host only passes lines that start with load_module; a comment that
    # slipped through would still not count
    assert not parse_lua_probe(probe(DEBIAN_V, "# load_module modules/ngx_http_lua_module.so;\n")
                               ).lua


def test_module_file_only_installed_but_a_dynamic_build_option_is_not_lua() -> None:
    version = DEBIAN_V.replace("--with-compat",
                               "--add-dynamic-module=/build/debian/modules/http-lua")
    assert not parse_lua_probe(probe(version, "")).lua


def test_compiled_in_lua_is_lua_without_any_load_module() -> None:
    found = parse_lua_probe(probe(OPENRESTY_V, ""))
    assert found.lua and "compiled into" in found.why


@pytest.mark.parametrize("output", [
    probe(DEBIAN_V, "load_module modules/ngx_http_lua_module.so;\n", rc=1),  # -T failed
    DEBIAN_V,  # the script was cut short
    "",  # nothing at all (a fake or broken host)
    "bash: nginx: command not found\n",
])
def test_anything_unclear_is_not_lua_and_says_why(output: str) -> None:
    found = parse_lua_probe(output)
    assert not found.lua and found.why


def test_probe_script_is_one_command_that_only_ships_load_module_lines() -> None:
    script = lua_probe_script("sudo nginx")
    assert script.startswith("sudo nginx -V 2>&1; ")
    assert "sudo nginx -T 2>/dev/null | grep -E '^[[:space:]]*load_module[[:space:]]'" in script
    assert "${PIPESTATUS[0]}" in script and PROBE_SPLIT in script


# ---------------------------------------------------------------- include integration:
# the user's server includes snippets the first deploy has not written yet, so -T fails


SNIPPETS = ("/etc/nginx/conf.d/shop.server", "/etc/nginx/conf.d/shop.location")


def failed_t(missing: str, load_lines: str) -> str:
    """A probe whose -T failed, with the fallback: -t's [emerg] line and the main config's
    load_module lines (those of modules-enabled/*.conf included)."""
    emerg = (f'nginx: [emerg] open() "{missing}" failed (2: No such file or directory) in '
             "/etc/nginx/sites-enabled/shop:7\n")
    return probe(DEBIAN_V, "", rc=1) + f"{FALLBACK_SPLIT}\n{emerg}{load_lines}"


def test_first_deploy_of_the_include_integration_reads_the_main_config() -> None:
    found = parse_lua_probe(failed_t(SNIPPETS[0], "load_module modules/ndk_http_module.so;\n"
                                     "load_module modules/ngx_http_lua_module.so;\n"), SNIPPETS)
    assert found.lua and SNIPPETS[0] in found.why and "first deploy" in found.why


def test_main_config_without_lua_is_still_not_lua() -> None:
    assert not parse_lua_probe(failed_t(SNIPPETS[0], ""), SNIPPETS).lua


@pytest.mark.parametrize("missing", ["/etc/nginx/conf.d/other.server", "/etc/ssl/shop.pem"])
def test_a_config_broken_by_anything_but_our_own_snippets_stays_unknown(missing: str) -> None:
    found = parse_lua_probe(failed_t(missing, "load_module modules/ngx_http_lua_module.so;\n"),
                            SNIPPETS)
    assert not found.lua and "unknown" in found.why


def test_without_snippets_a_failed_t_stays_unknown_and_nothing_more_is_asked() -> None:
    output = failed_t(SNIPPETS[0], "load_module modules/ngx_http_lua_module.so;\n")
    assert not parse_lua_probe(output).lua  # server integration: as before
    assert FALLBACK_SPLIT not in lua_probe_script("sudo nginx")
    script = lua_probe_script("sudo nginx", SNIPPETS)
    assert FALLBACK_SPLIT in script and "sudo nginx -t 2>&1" in script


# ---------------------------------------------------------------- choosing per host


class ProbedHost(FakeHost):
    """A fake traffic host whose nginx answers the probe with `answer`."""

    def __init__(self, spec: HostSpec, cfg: Config, world: FakeWorld, answer: str) -> None:
        super().__init__(spec, cfg, world)
        self.answer = answer
        self.probes = 0

    def run(self, command: str, **kw: object) -> Result:  # type: ignore[override]
        if PROBE_SPLIT in command:
            assert kw.get("mutates") is False  # a dry run asks too; it changes nothing
            self.probes += 1
            return Result(command, 0, self.answer, "")
        return super().run(command, **kw)  # type: ignore[arg-type]


def cfg_with(tmp_path: Path, **nginx: object) -> Config:
    return config.from_dict({"app": "demo", "start": "x {port}", "nginx": dict(nginx)},
                            base_dir=str(tmp_path))


LUA = probe(DEBIAN_V, "load_module modules/ngx_http_lua_module.so;\n")
PLAIN = probe(DEBIAN_V, "")


def host_for(cfg: Config, answer: str) -> ProbedHost:
    return ProbedHost(HostSpec("local"), cfg, FakeWorld(), answer)


def test_auto_is_the_default_and_picks_lua_where_nginx_loads_it(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path)
    assert cfg.nginx.mode == "auto"
    host = host_for(cfg, LUA)
    router = router_for(cfg, host)
    assert isinstance(router, NginxLuaRouter) and router.notice == ""
    assert cfg.nginx.control == config.DEFAULT_CONTROL_PORT  # no control_port needed


def test_auto_picks_reload_elsewhere_and_says_how_to_get_lua(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path)
    router = router_for(cfg, host_for(cfg, PLAIN))
    assert isinstance(router, NginxReloadRouter)
    assert "keep-alive clients may see a reset" in router.notice
    assert "libnginx-mod-http-lua" in router.notice and "\n" not in router.notice


def test_one_probe_per_host_per_run(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path)
    host, other = host_for(cfg, LUA), host_for(cfg, PLAIN)
    for _ in range(3):
        router_for(cfg, host)
        router_for(cfg, other)
    assert host.probes == 1 and other.probes == 1  # each host asked once, each its own answer
    assert isinstance(router_for(cfg, other), NginxReloadRouter)


def test_an_unreachable_host_is_not_cached_and_not_lua(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path)

    class Down(ProbedHost):
        def run(self, command: str, **kw: object) -> Result:  # type: ignore[override]
            self.probes += 1
            raise CommandFailed("SSH connection lost", host="lb1")

    host = Down(HostSpec("local"), cfg, FakeWorld(), "")
    assert isinstance(router_for(cfg, host), NginxReloadRouter)
    router_for(cfg, host)
    assert host.probes == 2  # asked again next time: the answer was not an answer


@pytest.mark.parametrize(("mode", "kind"), [("lua", NginxLuaRouter),
                                            ("reload", NginxReloadRouter)])
def test_an_explicit_mode_never_asks(tmp_path: Path, mode: str, kind: type) -> None:
    cfg = cfg_with(tmp_path, mode=mode)
    host = host_for(cfg, LUA if mode == "reload" else PLAIN)
    assert isinstance(router_for(cfg, host), kind) and host.probes == 0


def test_app_hosts_given_by_name_keep_auto_on_reload_without_asking(tmp_path: Path) -> None:
    cfg = config.from_dict({"app": "demo", "start": "x {port}",
                            "hosts": {"app": ["app1.example.com"], "traffic": ["local"]}},
                           base_dir=str(tmp_path))
    host = host_for(cfg, LUA)
    router = router_for(cfg, host)
    assert isinstance(router, NginxReloadRouter) and host.probes == 0
    assert "app1.example.com" in router.notice and "upstream" in router.notice


def test_your_own_template_decides_in_auto_mode(tmp_path: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "nginx_templates"
    (tmp_path / "mine-lua.conf.j2").write_text((bundled / "bluegreen-lua.conf.j2").read_text())
    (tmp_path / "mine.conf.j2").write_text((bundled / "bluegreen.conf.j2").read_text())
    lua_cfg = cfg_with(tmp_path, template="mine-lua.conf.j2")
    plain_cfg = cfg_with(tmp_path, template="mine.conf.j2")
    host = host_for(lua_cfg, PLAIN)
    assert isinstance(router_for(lua_cfg, host), NginxLuaRouter) and host.probes == 0
    assert isinstance(router_for(plain_cfg, host_for(plain_cfg, LUA)), NginxReloadRouter)


def test_notices_are_one_line_per_kind_naming_the_hosts(tmp_path: Path) -> None:
    cfg = config.from_dict({"app": "demo", "start": "x {port}",
                            "hosts": {"traffic": ["lb1", "lb2", "lb3"]}},
                           base_dir=str(tmp_path))
    world = FakeWorld()
    routers = [router_for(cfg, ProbedHost(HostSpec(name), cfg, world, answer))
               for name, answer in (("lb1", PLAIN), ("lb2", LUA), ("lb3", PLAIN))]
    lines = switch_notices(routers)
    assert len(lines) == 1 and lines[0].endswith("[lb1, lb3]")


def test_a_reload_mode_switch_prints_the_notice_once_and_changes_nothing_else(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)  # the fake nginx answers no probe: auto means reload there
    h.deploy("v1")
    h.deploy("v2")
    out = h.out.getvalue().splitlines()
    said = [line for line in out if "keep-alive clients may see a reset" in line]
    assert len(said) == 1 and "libnginx-mod-http-lua" in said[0]
    assert out.index(said[0]) == out.index(next(x for x in out if x.startswith("--> switch"))) + 1
    assert h.front_slot() == "green"


# ---------------------------------------------------------------- config


def test_control_port_zero_means_the_default_and_an_explicit_one_wins(tmp_path: Path) -> None:
    assert cfg_with(tmp_path, mode="lua").nginx.control == config.DEFAULT_CONTROL_PORT
    assert cfg_with(tmp_path, mode="lua", control_port=9001).nginx.control == 9001


def test_unknown_mode_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as err:
        cfg_with(tmp_path, mode="fast")
    assert err.value.key == "nginx.mode" and "auto" in str(err.value)
