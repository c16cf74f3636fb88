"""Who may see the page and /metrics: a token (bearer, basic, or the login cookie) when one is
configured, loopback clients only when none is, and nobody when the service listens on a
public address without one."""

from __future__ import annotations

import base64
import hmac
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.settings import load_settings, resolve_secrets
from bluegreen.automation.web import auth
from bluegreen.automation.wsgi import HookApp
from bluegreen.errors import ConfigError
from tests.unit.web.conftest import World, make_world

TOKEN = "ui-token-0123456789abcdef"
PROTECTED = ("/ui/", "/ui/app/demo", "/ui/api/state", "/metrics")


@pytest.fixture
def guarded(tmp_path: Path) -> World:
    world = make_world(tmp_path, token_env="UI_TOKEN", environ={"UI_TOKEN": TOKEN})
    return world.record()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def cookie_from(headers: dict[str, str]) -> str:
    match = re.match(r"(bluegreen_ui=[^;]*);", headers["Set-Cookie"])
    assert match is not None
    return match.group(1)


# ---------------------------------------------------------------- with a token


@pytest.mark.parametrize("path", PROTECTED)
def test_no_token_is_401(guarded: World, path: str) -> None:
    status, headers, body = guarded.call(path)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="bluegreen"'
    assert b"demo" not in body.replace(b"/ui/app/demo", b"")  # nothing about the app leaks
    if path.startswith("/ui/api/"):
        assert json.loads(body)["error"].startswith("a token is required")
    elif path.startswith("/ui/"):
        assert b'<form method="post" action="/ui/login"' in body  # the login form


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("how", ["bearer", "basic", "cookie"])
def test_wrong_token_is_401(guarded: World, path: str, how: str) -> None:
    wrong = TOKEN[:-1] + "x"
    header = {"bearer": {"Authorization": f"Bearer {wrong}"},
              "basic": {"Authorization": basic("prometheus", wrong)},
              "cookie": {"Cookie": "bluegreen_ui=9999999999.0000"}}[how]
    status, _, _ = guarded.call(path, headers=header)
    assert status == 401


@pytest.mark.parametrize("path", PROTECTED)
def test_the_right_token_opens_every_protected_path(guarded: World, path: str) -> None:
    for header in ({"Authorization": f"Bearer {TOKEN}"},
                   {"Authorization": basic("anyone", TOKEN)}):
        status, _, body = guarded.call(path, headers=header)
        assert status == 200, (header, body[:300])
    # behind a proxy and from anywhere: the token is what counts
    status, _, _ = guarded.call(path, remote="203.0.113.9",
                                headers={"Authorization": f"Bearer {TOKEN}",
                                         "X-Forwarded-For": "198.51.100.7"})
    assert status == 200


def test_login_form_sets_a_signed_cookie_that_opens_the_page(guarded: World) -> None:
    status, _, body = guarded.call("/ui/login", query="next=/ui/app/demo")
    assert status == 200 and b'name="next" value="/ui/app/demo"' in body
    status, _, body = guarded.call("/ui/login", method="POST",
                                   body=b"token=nope&next=/ui/app/demo",
                                   content_type="application/x-www-form-urlencoded")
    assert status == 401 and b"wrong token" in body
    status, headers, _ = guarded.call("/ui/login", method="POST",
                                      body=f"token={TOKEN}&next=/ui/app/demo".encode(),
                                      content_type="application/x-www-form-urlencoded")
    assert status == 303 and headers["Location"] == "/ui/app/demo"
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = cookie_from(headers)
    assert TOKEN not in cookie  # the cookie is a signed expiry, not the token
    status, _, body = guarded.call("/ui/", headers={"Cookie": cookie})
    assert status == 200 and b'action="/ui/logout"' in body
    # a tampered expiry breaks the signature
    expires, _, signature = cookie.partition("=")[2].partition(".")
    forged = f"bluegreen_ui={int(expires) + 3600}.{signature}"
    assert guarded.call("/ui/", headers={"Cookie": forged})[0] == 401
    # log out: the cookie is cleared
    status, headers, _ = guarded.call("/ui/logout", method="POST")
    assert status == 303 and "Max-Age=0" in headers["Set-Cookie"]


def test_an_expired_login_is_401(guarded: World) -> None:
    guard = guarded.web.guard
    old = guard.session_cookie(secure=False, now=1000.0).split(";")[0]
    assert guarded.call("/ui/", headers={"Cookie": old})[0] == 401


def test_login_never_redirects_elsewhere(guarded: World) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/ui/\\evil", "/metrics"):
        _, headers, _ = guarded.call("/ui/login", method="POST",
                                     body=f"token={TOKEN}&next={target}".encode(),
                                     content_type="application/x-www-form-urlencoded")
        assert headers["Location"] == "/ui/", target


def test_tokens_are_compared_in_constant_time(guarded: World,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    guarded.call("/metrics", headers={"Authorization": "Bearer wrong"})
    assert seen == [(b"wrong", TOKEN.encode())]


def test_a_named_but_unset_token_turns_the_page_off_even_on_loopback(tmp_path: Path) -> None:
    world = make_world(tmp_path, token_env="UI_TOKEN", environ={}).record()
    for path in PROTECTED:
        status, _, body = world.call(path)
        assert status == 403, path
        assert b"UI_TOKEN" in body and b"is not set" in body


def test_the_token_never_appears_and_is_withheld_from_deploys(guarded: World) -> None:
    assert "UI_TOKEN" in guarded.settings.withheld_env()
    _, _, body = guarded.call("/ui/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN.encode() not in body


def test_the_setting_takes_a_variable_name_not_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "automation.toml"
    path.write_text('[service]\nui_token_env = "s3cr3t value!"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert exc.value.key == "service.ui_token_env"
    assert "s3cr3t" not in str(exc.value)


# ---------------------------------------------------------------- without a token


@pytest.mark.parametrize("path", PROTECTED)
def test_loopback_only_works_without_a_token(world: World, path: str) -> None:
    world.record()
    status, _, body = world.call(path, remote="127.0.0.1")
    assert status == 200, body[:300]
    assert world.call(path, remote="::1")[0] == 200


@pytest.mark.parametrize("path", PROTECTED)
def test_loopback_mode_refuses_others_and_proxied_requests(world: World, path: str) -> None:
    world.record()
    assert world.call(path, remote="192.0.2.10")[0] == 403
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        status, _, body = world.call(path, remote="127.0.0.1", headers={header: "192.0.2.10"})
        assert status == 403, header
        assert b"proxy" in body


def test_a_public_listen_address_without_a_token_turns_the_page_off(tmp_path: Path) -> None:
    world = make_world(tmp_path, listen="0.0.0.0").record()
    for path in PROTECTED:
        status, _, body = world.call(path, remote="127.0.0.1")
        assert status == 403
        assert b"0.0.0.0" in body and b"ui_token_env" in body


# ---------------------------------------------------------------- mounted in the receiver


def test_serve_routes_ui_and_metrics_to_the_page_and_keeps_hooks(tmp_path: Path) -> None:
    world = make_world(tmp_path).record()
    settings = load_settings(world.root / "automation.toml")
    app = HookApp(settings, resolve_secrets(settings, {"GH_SECRET": "x" * 20,
                                                       "JENKINS_TOKEN": "y" * 20}),
                  JobQueue(settings.db_path), wake=lambda lane: None,
                  health=lambda: (True, {}))

    def call(path: str) -> tuple[str, bytes]:
        seen: dict[str, Any] = {}
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                   "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO()}
        body = b"".join(app(environ, lambda s, h: seen.update(status=s, headers=dict(h))))
        return seen["status"] + " " + seen["headers"]["Content-Type"], body

    status, body = call("/ui/")
    assert status.startswith("200") and "text/html" in status and b"demo" in body
    status, body = call("/metrics")
    assert status.startswith("200") and b"bluegreen_operations_total" in body
    status, body = call("/healthz")
    assert status.startswith("200") and json.loads(body)["status"] == "ok"
    status, _ = call("/hooks/github")
    assert status.startswith("405")  # still the receiver's: it wants POST
