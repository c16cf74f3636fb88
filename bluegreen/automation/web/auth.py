"""Who may see the status page and /metrics.

They show infrastructure (hosts, versions, who deployed what), so:
- with `service.ui_token_env` set, every request needs that token: `Authorization: Bearer
  <token>` (Prometheus' `authorization`), HTTP basic auth with the token as the password
  (any user name; Prometheus' `basic_auth`), or the cookie the login form sets;
- without it, they answer only when the service listens on loopback, to a loopback client
  whose request carries no proxy header: a proxy on the same machine would otherwise make
  the whole internet a loopback client;
- otherwise (listening on a public address with no token) they are off: 403, saying why.
Every comparison is constant-time. The cookie is not the token: it is an expiry signed
with the token, so a stolen cookie stops working when it expires or the token changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from bluegreen.automation.web.http import Request

log = logging.getLogger("bluegreen.automation.web")

COOKIE = "bluegreen_ui"
SESSION_SECONDS = 12 * 3600
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")
MIN_TOKEN_LENGTH = 16


def is_loopback(address: str) -> bool:
    address = address.strip().strip("[]")
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    allowed: bool
    status: int = 200  # 401: credentials missing or wrong; 403: the page is off
    reason: str = ""
    via: str = ""  # loopback | bearer | basic | cookie


class Guard:
    def __init__(self, *, token: bytes | None, listen: str, token_env: str = "") -> None:
        self.token = token or None
        self.listen = listen
        self.token_env = token_env
        self.loopback_listen = is_loopback(listen)

    @classmethod
    def from_settings(cls, listen: str, token_env: str, environ: Mapping[str, str]) -> Guard:
        token = environ.get(token_env, "") if token_env else ""
        if token_env and not token:
            # Fail closed: a named but empty token must not fall back to "no token needed"
            log.error("service.ui_token_env names %s, which is not set or empty: the status "
                      "page and /metrics answer 403 until it is", token_env)
        elif token and len(token) < MIN_TOKEN_LENGTH:
            log.warning("the status page token in %s is shorter than %d characters; "
                        "generate one with `openssl rand -hex 32`", token_env, MIN_TOKEN_LENGTH)
        return cls(token=token.encode() if token else None, listen=listen, token_env=token_env)

    # ---- the decision

    def check(self, request: Request, now: float | None = None) -> Access:
        if self.token_env and self.token is None:
            return Access(False, 403, f"the status page is off: environment variable "
                                      f"{self.token_env} (service.ui_token_env) is not set")
        if self.token is None:
            return self._without_token(request)
        presented, via = self._presented(request)
        if via == "cookie":
            if self._cookie_valid(presented, time.time() if now is None else now):
                return Access(True, via="cookie")
            return Access(False, 401, "the login has expired or the token changed")
        if not presented:
            return Access(False, 401, "a token is required (Authorization: Bearer, basic "
                                      "auth, or the login form)")
        if self.token_matches(presented):
            return Access(True, via=via)
        return Access(False, 401, "wrong token")

    def _without_token(self, request: Request) -> Access:
        if not self.loopback_listen:
            return Access(False, 403, f"the status page is off: the service listens on "
                                      f"{self.listen}, not loopback, and "
                                      "service.ui_token_env is not set")
        if not is_loopback(request.remote):
            return Access(False, 403, "the status page answers loopback clients only (set "
                                      "service.ui_token_env to open it to others)")
        if any(request.header(name) for name in PROXY_HEADERS):
            return Access(False, 403, "this request came through a proxy; without "
                                      "service.ui_token_env the status page answers only "
                                      "local clients directly")
        return Access(True, via="loopback")

    def _presented(self, request: Request) -> tuple[str, str]:
        auth = request.header("authorization")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "bearer"
        if scheme.lower() == "basic" and value.strip():
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return "", "basic"
            return decoded.partition(":")[2], "basic"
        cookie = self._cookie(request)
        if cookie:
            return cookie, "cookie"
        return "", ""

    @staticmethod
    def _cookie(request: Request) -> str:
        raw = request.header("cookie")
        if not raw:
            return ""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return ""
        morsel = jar.get(COOKIE)
        return morsel.value if morsel is not None else ""

    # ---- tokens and sessions

    def token_matches(self, presented: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.token)

    def _signature(self, expires: str) -> str:
        assert self.token is not None
        return hmac.new(self.token, b"bluegreen-ui-session:" + expires.encode(),
                        hashlib.sha256).hexdigest()

    def _cookie_valid(self, value: str, now: float) -> bool:
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or int(expires) < now:
            return False
        return hmac.compare_digest(signature.encode(), self._signature(expires).encode())

    def session_cookie(self, *, secure: bool, now: float | None = None) -> str:
        """The Set-Cookie value after a good login: HttpOnly (no script reads it),
        SameSite=Strict (no other site's page sends it)."""
        expires = str(int((time.time() if now is None else now) + SESSION_SECONDS))
        return (f"{COOKIE}={expires}.{self._signature(expires)}; Path=/; Max-Age="
                f"{SESSION_SECONDS}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else ""))

    @staticmethod
    def clear_cookie(*, secure: bool) -> str:
        return (f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
                + ("; Secure" if secure else ""))

    @property
    def uses_login(self) -> bool:
        return self.token is not None
