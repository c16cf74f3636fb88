"""A minimal HTTP/1.0 exchange over any socket-like object.

Health probes go through an SSH direct-tcpip channel as often as through a plain socket, so
the probe speaks HTTP itself instead of teaching requests about paramiko channels. HTTP/1.0
with Connection: close keeps it honest: one request, read to EOF, no pooling surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MAX_BODY = 64 * 1024  # a health answer is small; never buffer an unbounded reply


class SocketLike(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, n: int) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def build_request(path: str, host: str = "localhost",
                  headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise ValueError(f"not a request path: {path!r}")
    if method not in ("GET", "POST"):
        raise ValueError(f"unsupported method {method}")
    lines = [f"{method} {path} HTTP/1.0", f"Host: {host}", "Connection: close",
             "User-Agent: bluegreen-probe"]
    if method == "POST":
        lines.append("Content-Length: 0")
    for k, v in (headers or {}).items():
        if any(c in k + v for c in "\r\n"):
            raise ValueError(f"header {k!r} contains a line break")
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response(raw: bytes) -> HttpReply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpReply(int(parts[1]), headers, body[:MAX_BODY])


def exchange(sock: SocketLike, request: bytes) -> HttpReply:
    """Send one request and read the reply to EOF (bounded). The caller sets timeouts."""
    try:
        sock.sendall(request)
        chunks: list[bytes] = []
        size = 0
        while size < MAX_BODY + 16 * 1024:
            chunk = sock.recv(16384)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return parse_response(b"".join(chunks))
    finally:
        sock.close()
