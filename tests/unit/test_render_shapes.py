"""The shapes the templates render: WebSocket upgrade and stream timeouts in every template,
and the include-only integration (an http-level file plus two static snippets). Pure:
the integration tests run real nginx on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bluegreen import config, render
from bluegreen.errors import ConfigError


def cfg_for(tmp_path: Path, app: str = "shop", **nginx: object) -> config.Config:
    return config.from_dict({
        "app": app, "start": "x {port}",
        "hosts": {"app": [{"address": "10.0.0.1", "name": "a1"}, "deploy@10.0.0.2"]},
        "nginx": {"listen": "127.0.0.1:8080", "target": "/etc/nginx/conf.d/{app}.conf",
                  **nginx},
    }, base_dir=str(tmp_path))


MODES = ["reload", "lua"]
INTEGRATIONS = ["server", "include"]


@pytest.mark.parametrize("integration", INTEGRATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_every_template_passes_upgrade_with_a_map_at_http_level(
        tmp_path: Path, mode: str, integration: str) -> None:
    cfg = cfg_for(tmp_path, app="my-shop.v2", mode=mode, integration=integration)
    http = render.render(cfg, "green", "r", "v", generation=5)
    location = render.render_snippets(cfg).get(cfg.nginx_snippets.get("location", ""), http)
    # the map is in the http-level file, outside any server block
    head = http.split("server {")[0]
    assert "map $http_upgrade $bluegreen_my_shop_v2_connection {" in head
    assert "proxy_set_header Upgrade $http_upgrade;" in location
    assert "proxy_set_header Connection $bluegreen_my_shop_v2_connection;" in location
    assert 'proxy_set_header Connection "";' not in location  # would break the upgrade
    assert "{{" not in http + location and "{%" not in http + location


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_lua_gives_websockets_the_stream_timeout_per_request(tmp_path: Path,
                                                             integration: str) -> None:
    cfg = cfg_for(tmp_path, mode="lua", integration=integration, stream_timeout=900)
    http = render.render(cfg, "blue", "r", "v")
    assert "if ngx.var.http_upgrade then" in http
    assert "balancer.set_timeouts(2, 900, 900)" in http


def test_reload_server_template_sends_handshakes_to_a_stream_location(tmp_path: Path) -> None:
    text = render.render(cfg_for(tmp_path, mode="reload", stream_timeout=900), "blue", "r", "v")
    assert "error_page 418 = @bluegreen_shop_stream;" in text
    stream = text.split("location @bluegreen_shop_stream {")[1]
    assert "proxy_read_timeout 900s;" in stream and "proxy_send_timeout 900s;" in stream
    assert "add_header X-Bluegreen-Slot blue always;" in stream  # the check still sees it
    plain = text.split("location / {")[1].split("location @")[0]
    assert "proxy_read_timeout 60s;" in plain


@pytest.mark.parametrize("mode", MODES)
def test_include_renders_only_what_bluegreen_owns(tmp_path: Path, mode: str) -> None:
    cfg = cfg_for(tmp_path, mode=mode, integration="include")
    http = render.render(cfg, "green", "v2-abc", "v2", generation=7)
    marker = render.parse_marker(http)
    assert marker and (marker.slot, marker.port, marker.release) == ("green", 8082, "v2-abc")
    assert "upstream shop_live {" in http
    assert "listen 127.0.0.1:8080" not in http  # the front door is the user's server
    assert render.is_lua_config(http) == (mode == "lua")
    if mode == "lua":
        assert "listen 127.0.0.1:18089;" in http and "server_name bluegreen-shop;" in http
        assert 'map "" $bluegreen_shop_file_port {\n    default 8082;' in http
    else:
        assert "server 10.0.0.1:8082 max_fails=0;" in http
        assert 'map "" $bluegreen_shop_slot {\n    default "green";' in http
        assert "server {" not in http


@pytest.mark.parametrize("mode", MODES)
def test_include_snippets_never_change_on_a_switch_but_the_shape_covers_them(
        tmp_path: Path, mode: str) -> None:
    cfg = cfg_for(tmp_path, mode=mode, integration="include")
    assert cfg.nginx_snippets == {"server": "/etc/nginx/conf.d/shop.server",
                                  "location": "/etc/nginx/conf.d/shop.location"}
    blue = render.parse_marker(render.render(cfg, "blue", "r1", "v1"))
    green = render.parse_marker(render.render(cfg, "green", "r2", "v2"))
    assert blue and green and blue.shape == green.shape
    snippets = render.render_snippets(cfg)
    assert set(snippets) == set(cfg.nginx_snippets.values())
    location = snippets["/etc/nginx/conf.d/shop.location"]
    assert "proxy_pass http://shop_live;" in location
    for part, path in cfg.nginx_snippets.items():  # nothing in them depends on the slot
        as_green = render._render_raw(cfg, render.template_context(
            cfg, "green", "r2", "v2", 99, part=part))
        assert as_green == snippets[path]
    server = snippets["/etc/nginx/conf.d/shop.server"]
    if mode == "lua":
        # uncounting at server level: an error_page elsewhere still ends the count
        assert "log_by_lua_block" in server and "log_by_lua" not in location
        # the header comes from lua: no add_header, so no inheritance trap
        assert not [ln for ln in location.splitlines() if ln.startswith("add_header")]
        assert 'ngx.header["X-Bluegreen-Slot"]' in location
    else:
        assert "add_header X-Bluegreen-Slot $bluegreen_shop_slot always;" in location
    other = cfg_for(tmp_path, mode=mode, integration="include", stream_timeout=10)
    changed = render.parse_marker(render.render(other, "blue", "r1", "v1"))
    if mode == "lua":  # the stream timeout lives in the http file's balancer
        assert changed and changed.shape != blue.shape


def test_snippet_paths_can_be_given(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, integration="include",
                  location_snippet="/etc/nginx/snippets/{app}-location.conf",
                  server_snippet="/etc/nginx/snippets/{app}-server.conf")
    assert cfg.nginx_snippets == {"server": "/etc/nginx/snippets/shop-server.conf",
                                  "location": "/etc/nginx/snippets/shop-location.conf"}
    assert cfg_for(tmp_path).nginx_snippets == {}  # the server integration has none


@pytest.mark.parametrize(("nginx", "key", "says"), [
    ({"integration": "inline"}, "nginx.integration", "server or include"),
    ({"integration": "include", "location_snippet": "/etc/nginx/conf.d/{app}.conf"},
     "nginx.location_snippet", "different files"),
    ({"location_snippet": "/x/{name}.loc"}, "nginx.location_snippet", "{app}"),
    ({"listen": "10.0.0.5:443 ssl", "tls_verify": False}, "nginx.tls_verify", "loopback"),
    ({"integration": "include", "listen": "443 ssl"}, "nginx.server_name", "certificate"),
    ({"listen": "443 ssl", "server_name": "shop.test", "tls_ca_file": "nope.pem"},
     "nginx.tls_ca_file", "no such file"),
    ({"stream_timeout": 0}, "nginx.stream_timeout", "> 0"),
    ({"listen": "443 ssl", "server_name": "shop.test", "tls_ca_file": "not-pem.txt"},
     "nginx.tls_ca_file", "expected PEM certificates"),
])
def test_bad_shape_settings_name_the_key(tmp_path: Path, nginx: dict[str, object], key: str,
                                         says: str) -> None:
    (tmp_path / "not-pem.txt").write_text("hello\n")
    with pytest.raises(ConfigError) as err:
        cfg_for(tmp_path, **nginx)
    assert err.value.key == key and says in str(err.value)


@pytest.mark.parametrize("listen", ["443 ssl", "127.0.0.1:443 ssl", "[::1]:8443 ssl http2",
                                    "*:443 ssl"])
def test_not_verifying_is_allowed_on_loopback_only(tmp_path: Path, listen: str) -> None:
    cfg = cfg_for(tmp_path, listen=listen, tls_verify=False)
    assert cfg.nginx.tls and not cfg.nginx.tls_verify


def test_tls_front_door_is_read_from_listen(tmp_path: Path) -> None:
    assert cfg_for(tmp_path, listen="127.0.0.1:8443 ssl").nginx.tls
    assert not cfg_for(tmp_path, listen="127.0.0.1:8080").nginx.tls
    assert not cfg_for(tmp_path, listen="sslhost:80").nginx.tls  # a parameter, not a substring


def test_nginx_t_output_names_the_file_it_blames() -> None:
    from bluegreen.routers.nginx import blamed_file
    out = ('nginx: [emerg] unexpected "}" in /etc/nginx/conf.d/shop.conf:12\n'
           "nginx: configuration file /etc/nginx/nginx.conf test failed\n")
    assert blamed_file(out) == "/etc/nginx/conf.d/shop.conf"
    assert blamed_file("nginx: configuration file test failed\n") == ""
