"""Rendering the nginx config: pure, no nginx (the integration tests run `nginx -t` on it)."""

from pathlib import Path

import pytest

from bluegreen import config, render
from bluegreen.errors import BluegreenError


def cfg_for(tmp_path: Path, **nginx: object) -> config.Config:
    return config.from_dict({
        "app": "shop", "start": "x {port}",
        "hosts": {"app": [{"address": "10.0.0.1", "name": "a1"}, "deploy@10.0.0.2"]},
        "nginx": {"listen": "127.0.0.1:8080", "control_port": 9001, **nginx},
    }, base_dir=str(tmp_path))


@pytest.mark.parametrize("mode", ["reload", "lua"])
def test_default_templates_route_every_app_host_to_the_live_port(tmp_path: Path,
                                                                  mode: str) -> None:
    cfg = cfg_for(tmp_path, mode=mode)
    text = render.render(cfg, "green", "v2-abc", "v2", generation=7)
    marker = render.parse_marker(text)
    assert marker is not None
    assert (marker.slot, marker.port, marker.release) == ("green", 8082, "v2-abc")
    assert "listen 127.0.0.1:8080;" in text
    assert "10.0.0.1" in text and "10.0.0.2" in text
    if mode == "reload":
        assert "server 10.0.0.1:8082 max_fails=0;" in text
        assert "add_header X-Bluegreen-Slot green always;" in text
    else:
        assert "file_live, file_gen = 8082, 7" in text
        assert "listen 127.0.0.1:9001;" in text
        assert "{%" not in text and "{{" not in text  # no Jinja left over in the lua code


def test_shape_ignores_the_live_slot_but_not_the_hosts(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, mode="lua")
    blue = render.parse_marker(render.render(cfg, "blue", "r1", "v1"))
    green = render.parse_marker(render.render(cfg, "green", "r2", "v2"))
    assert blue and green and blue.shape == green.shape  # a plain switch: no reload needed
    other = config.from_dict({"app": "shop", "start": "x {port}",
                              "nginx": {"mode": "lua", "control_port": 9001}},
                             base_dir=str(tmp_path))
    changed = render.parse_marker(render.render(other, "blue", "r1", "v1"))
    assert changed and changed.shape != blue.shape  # hosts changed: a reload is needed


def test_local_app_host_is_reached_on_loopback(tmp_path: Path) -> None:
    cfg = config.from_dict({"app": "a", "start": "x {port}"}, base_dir=str(tmp_path))
    assert "server 127.0.0.1:8081 max_fails=0;" in render.render(cfg, "blue", "r", "v")


def test_custom_template_without_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.conf.j2").write_text("upstream x { server {{ servers[0] }}; }\n")
    with pytest.raises(BluegreenError, match="marker"):
        render.render(cfg_for(tmp_path, template="t.conf.j2"), "blue", "r", "v")


def test_undefined_variable_names_what_the_template_may_use(tmp_path: Path) -> None:
    (tmp_path / "t.conf.j2").write_text("# {{ marker }}\n{{ live_prot }}\n")
    with pytest.raises(BluegreenError) as err:
        render.render(cfg_for(tmp_path, template="t.conf.j2"), "blue", "r", "v")
    assert "live_prot" in err.value.what and "live_port" in err.value.hint


def test_missing_template_file(tmp_path: Path) -> None:
    with pytest.raises(BluegreenError, match="not found"):
        render.render(cfg_for(tmp_path, template="nope.j2"), "blue", "r", "v")


@pytest.mark.parametrize(("listen", "door"), [
    ("80", ("127.0.0.1", 80)),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:80 default_server", ("127.0.0.1", 80)),
    ("[::]:8443", ("127.0.0.1", 8443)),
    ("[::1]:81", ("::1", 81)),
])
def test_front_door_from_listen(listen: str, door: tuple[str, int]) -> None:
    assert render.front_door(listen) == door


def test_parse_marker_of_foreign_or_missing_file() -> None:
    assert render.parse_marker(None) is None
    assert render.parse_marker("upstream x {}") is None
