"""A minimal HTTP/1.0 exchange over any socket-like object.

Health probes go through an SSH direct-tcpip channel as often as through a plain socket, so
the probe speaks HTTP itself instead of teaching requests about paramiko channels. HTTP/1.0
with Connection: close keeps it honest: one request, read to EOF, no pooling surprises.

An HTTPS front door is spoken through `TlsStream`: TLS over memory buffers, so it runs over
a paramiko channel exactly as over a socket (ssl.wrap_socket needs a real file descriptor,
and a channel's fileno() is only a pipe that signals readiness).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")
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


@dataclass(frozen=True)
class Tls:
    """How to speak TLS to a front door: the name to send (SNI) and to find in its
    certificate, the CA bundle to check it against ("" = the system's), or no check."""

    server_name: str
    ca_file: str = ""
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        import ssl  # only a TLS front door pays for it; a switch's imports stay lean

        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class TlsStream:
    """A TLS client over any socket-like object: sendall/recv/close, like a socket.

    The handshake happens in the constructor; certificate or name mismatches raise
    ssl.SSLError (an OSError, like any other failure to reach the front door).
    """

    CHUNK = 16384

    def __init__(self, raw: SocketLike, tls: Tls) -> None:
        import ssl

        self._ssl = ssl
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = tls.context().wrap_bio(self.incoming, self.outgoing,
                                          server_hostname=tls.server_name)
        try:
            self._pump(self.obj.do_handshake)
        except BaseException:
            raw.close()
            raise

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw.sendall(data)

    def _fill(self) -> bool:
        data = self.raw.recv(self.CHUNK)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def _pump(self, step: Callable[[], T]) -> T:
        """Run one TLS step, moving bytes between the buffers and the wire until it can
        finish (a step may need several records from the peer)."""
        while True:
            try:
                result = step()
            except self._ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the front door closed during TLS") from None
                continue
            self._flush()
            return result

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self._pump(lambda v=view: self.obj.write(v))
            view = view[sent:]

    def recv(self, n: int) -> bytes:
        try:
            return bytes(self._pump(lambda: self.obj.read(n)))
        except (self._ssl.SSLZeroReturnError, self._ssl.SSLEOFError, ConnectionResetError):
            # the peer's close_notify, or a bare close after a complete HTTP/1.0 answer
            return b""

    def close(self) -> None:
        self.raw.close()
