"""The little HTTP the status page needs: a request read from the WSGI environ, a response.

Its own (not the webhook receiver's Request) so that the page and the receiver can change
apart, and the receiver imports the page without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]
REASONS = {200: "OK", 303: "See Other", 304: "Not Modified", 308: "Permanent Redirect",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
           415: "Unsupported Media Type", 500: "Internal Server Error"}
# The page loads its own script and stylesheet and nothing else: no CDN, no inline script
# (so an injected <script> would not run even if escaping failed somewhere).
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    remote: str
    environ: dict[str, Any]

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        headers = {key[5:].replace("_", "-").lower(): str(value)
                   for key, value in environ.items() if key.startswith("HTTP_")}
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = str(environ[key])
        return cls(method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
                   path=str(environ.get("PATH_INFO", "") or "/"),
                   query=parse_qs(str(environ.get("QUERY_STRING", ""))),
                   headers=headers, remote=str(environ.get("REMOTE_ADDR", "")),
                   environ=environ)

    def header(self, *names: str) -> str:
        """The first of `names` the request carries, stripped ("" when none does): the
        hook providers spell some headers two ways (Gitea/Forgejo)."""
        for name in names:
            value = self.headers.get(name.lower(), "").strip()
            if value:
                return value
        return ""

    @property
    def query_string(self) -> str:
        return str(self.environ.get("QUERY_STRING", ""))

    def arg(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or [default])[0]

    @property
    def secure(self) -> bool:
        """Reached over HTTPS (directly, or through the TLS proxy in front)."""
        return (self.environ.get("wsgi.url_scheme") == "https"
                or self.header("x-forwarded-proto").lower() == "https")

    def form(self, limit: int = 4096) -> dict[str, list[str]]:
        """A small urlencoded form body (the login form); {} when absent or too large."""
        ctype = self.header("content-type").split(";")[0].strip().lower()
        try:
            length = int(self.header("content-length") or "0")
        except ValueError:
            return {}
        if ctype != "application/x-www-form-urlencoded" or not 0 < length <= limit:
            return {}
        body = self.environ["wsgi.input"].read(length)
        return parse_qs(body.decode("utf-8", "replace"))


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"  # state changes by the second: never serve it from a cache

    def send(self, start_response: StartResponse) -> Iterable[bytes]:
        headers = [("Content-Type", self.content_type),
                   ("Content-Length", str(len(self.body))),
                   ("Cache-Control", self.cache), *SECURITY_HEADERS, *self.headers]
        start_response(f"{self.status} {REASONS.get(self.status, '')}".strip(), headers)
        return [self.body]


def text(status: int, body: str, **kw: Any) -> Response:
    return Response(status, body.encode(), content_type="text/plain; charset=utf-8", **kw)


def redirect(location: str, status: int = 303, headers: list[tuple[str, str]] | None = None
             ) -> Response:
    return Response(status, b"", content_type="text/plain; charset=utf-8",
                    headers=[("Location", location), *(headers or [])])
