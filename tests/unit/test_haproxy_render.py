"""Rendering nginx_templates/haproxy.cfg.j2: pure, no haproxy (the integration tests run
`haproxy -c` on it and serve through it)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest

from bluegreen import traffic
from bluegreen.errors import BluegreenError
from bluegreen.routers.haproxy_render import TEMPLATE, HaproxySite, hq, render

SITE = HaproxySite(
    app="shop", app_hosts=[("a1", "10.0.0.1"), ("deploy@10.0.0.2", "10.0.0.2")],
    ports={"blue": 8081, "green": 8082}, listen="127.0.0.1:8080",
    admin_socket="/run/haproxy/bluegreen.sock", state_file="/var/lib/bluegreen/shop.state",
    health_path="/health")


def server_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("server ")]


def test_template_lives_beside_the_nginx_templates() -> None:
    # through the package's templates link: the one copy, nginx_templates/, shipped inside
    assert TEMPLATE.parent.name == "templates" and TEMPLATE.exists()
    assert TEMPLATE.resolve().parent.name == "nginx_templates"


@pytest.mark.parametrize("live", ["blue", "green"])
def test_live_slot_ready_and_idle_slot_disabled(live: str) -> None:
    text = render(SITE, live, "v2-abc")
    idle_port = 8081 if live == "green" else 8082
    assert server_lines(text) == [
        f"server a1-8081-blue 10.0.0.1:8081{' disabled' if live != 'blue' else ''}",
        f"server a1-8082-green 10.0.0.1:8082{' disabled' if live != 'green' else ''}",
        f"server deploy_10.0.0.2-8081-blue 10.0.0.2:8081{' disabled' if live != 'blue' else ''}",
        f"server deploy_10.0.0.2-8082-green 10.0.0.2:8082"
        f"{' disabled' if live != 'green' else ''}",
    ]
    assert sum(f":{idle_port} disabled" in ln for ln in server_lines(text)) == 2


def test_marker_is_the_one_traffic_reads() -> None:
    marker = traffic.parse_marker(render(SITE, "green", "v2-abc"))
    assert marker is not None
    assert (marker.slot, marker.port, marker.release) == ("green", 8082, "v2-abc")
    assert len(marker.shape) == 12


def test_shape_ignores_the_live_slot_but_not_the_hosts() -> None:
    blue = traffic.parse_marker(render(SITE, "blue", "r1"))
    green = traffic.parse_marker(render(SITE, "green", "r2"))
    assert blue and green and blue.shape == green.shape  # a plain switch: runtime API only
    moved = traffic.parse_marker(render(replace(SITE, ports={"blue": 9081, "green": 9082}),
                                        "blue", "r1"))
    assert moved and moved.shape != blue.shape  # ports changed: a reload is needed


def test_the_pieces_the_driver_relies_on_are_rendered() -> None:
    text = render(SITE, "blue", "r1")
    assert "stats socket /run/haproxy/bluegreen.sock mode 600 level admin" in text
    assert "load-server-state-from-file local" in text
    assert "server-state-file-name /var/lib/bluegreen/shop.state" in text
    assert "http-response set-header X-Bluegreen-Slot %[srv_name,field(-1,-)]" in text
    assert "timeout tunnel 1h" in text
    assert "http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost" in text
    assert "frontend shop-front" in text and "backend shop\n" in text
    assert "bind 127.0.0.1:8080" in text
    assert "{{" not in text and "{%" not in text


def test_included_mode_leaves_global_and_defaults_to_the_user() -> None:
    text = render(replace(SITE, standalone=False), "blue", "r1")
    assert "\nglobal" not in text and "\ndefaults" not in text
    assert "frontend shop-front" in text and "timeout server 60s" in text


def test_tcp_admin_socket_has_no_file_mode() -> None:
    text = render(replace(SITE, admin_socket="ipv4@127.0.0.1:9999"), "blue", "r1")
    assert "stats socket ipv4@127.0.0.1:9999 level admin" in text


def test_values_are_quoted_for_haproxy_or_refused() -> None:
    assert hq("/health") == "/health"
    assert hq("/up?x=1 2") == "'/up?x=1 2'"
    assert hq("${HOME}") == "'${HOME}'"  # single quotes: no environment expansion
    with pytest.raises(ValueError, match="quote or control"):
        hq("/it's")
    with pytest.raises(ValueError, match="quote or control"):
        render(replace(SITE, health_path="/a\nbackend evil"), "blue", "r1")


def test_bad_durations_and_slots_are_refused_before_rendering() -> None:
    with pytest.raises(ValueError, match="check_interval"):
        render(replace(SITE, check_interval="1 s"), "blue", "r1")
    with pytest.raises(ValueError, match="slot"):
        render(SITE, "red", "r1")


def test_custom_template_without_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "h.cfg.j2").write_text("backend {{ backend }}\n")
    with pytest.raises(BluegreenError, match="marker"):
        render(SITE, "blue", "r1", template=tmp_path / "h.cfg.j2")


def test_template_error_names_the_variables(tmp_path: Path) -> None:
    (tmp_path / "h.cfg.j2").write_text("# {{ marker }}\n{{ nope }}\n")
    with pytest.raises(BluegreenError) as err:
        render(SITE, "blue", "r1", template=tmp_path / "h.cfg.j2")
    assert "servers" in err.value.hint


def test_a_canary_is_rendered_in_the_marker_and_the_canary_servers_weight() -> None:
    site = dataclasses.replace(SITE, preview_map="/var/lib/bluegreen/shop-preview.map")
    text = render(site, "blue", "r2", weight=25)
    assert "bluegreen-live: slot=blue " in text and text.split("\n")[1].endswith(" weight=25")
    green = [ln for ln in text.splitlines() if ln.strip().startswith("server ")
             and ln.split()[1].endswith("-green")]
    assert green and all(ln.endswith(" disabled weight 125") for ln in green)
    # the weight is not the shape: changing it needs no reload
    shape = [w for w in text.split("\n")[1].split() if w.startswith("shape=")]
    assert shape and shape[0] in render(site, "green", "r3")
    # the cohort cookie and the preview names the lua router uses
    assert "req.cook(bluegreen_cohort)" in text and "req.hdr(X-Bluegreen-Preview)" in text
    assert "map_str(/var/lib/bluegreen/shop-preview.map)" in text
