"""The bundled example app: a tiny HTTP service with the shape of a real one.

Stdlib only, so the tarball runs on any host with python3. Endpoints:
  GET  /           -> "hello from <version> (<slot>:<port>)"
  GET  /health     -> 200 "ok" once warmed up (503 before, 500 if built unhealthy)
  (a version containing "lying" passes /health and answers 500 on every other page: the
  build a health check cannot catch, for the after-switch watch)
  GET  /version    -> the version string
  GET  /slow?s=1.5 -> answers after s seconds (long requests in flight during a switch)
  POST /echo       -> echoes the body (keep-alive POST traffic in the benchmark)
  GET  /ws         -> a WebSocket (RFC 6455, stdlib only): says "hello <version> <slot>",
                      then answers each text message with "<version> <slot> <message>"

Behaviour is set by environment variables so the same build serves tests, demo and bench:
  BIND (127.0.0.1), WARMUP_SECONDS (0), UNHEALTHY (0/1, overridden by the VERSION file
  containing "unhealthy"), GRACEFUL (1): on SIGTERM stop accepting, finish in-flight
  requests, then exit. GRACEFUL=0 dies at once, like a default Spring Boot app, so the
  orchestrator, not the app, must make switches safe. A graceful stop ends WebSockets with
  a close frame (1001, going away).

Every accepted socket gets TCP_NODELAY: behind nginx's upstream keepalive, an answer written
in two sends (headers, then body, as http.server does) otherwise waits for nginx's delayed
ACK, about 40 ms per request (measured: ~180 req/s instead of ~1,300).
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "VERSION").read_text().strip() if (HERE / "VERSION").exists() else "dev"
STARTED = time.monotonic()
WARMUP = float(os.environ.get("WARMUP_SECONDS", "0"))
UNHEALTHY = os.environ.get("UNHEALTHY", "0") == "1" or "unhealthy" in VERSION
GRACEFUL = os.environ.get("GRACEFUL", "1") != "0"
LYING = "lying" in VERSION  # healthy by /health, broken on real pages
SLOT = os.environ.get("BLUEGREEN_SLOT", "?")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    server_version = "bluegreen-demo"
    # TCP_NODELAY on the accepted socket (StreamRequestHandler.setup): else every
    # keep-alive answer waits ~40 ms for nginx's delayed ACK (see the module docstring)
    disable_nagle_algorithm = True
    server: Server

    def setup(self) -> None:
        super().setup()
        self.busy = False
        self.server.track(self, True)

    def finish(self) -> None:
        self.server.track(self, False)
        super().finish()

    def parse_request(self) -> bool:
        self.busy = True  # a request line arrived: this connection is no longer idle
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            self.busy = False
            if self.server.stopping:
                self.close_connection = True  # finish this answer, then let the thread end

    def log_message(self, format: str, *args: object) -> None:
        pass  # the access log lives in nginx; stdout stays readable for the deploy's tail

    def _send(self, status: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        port = self.server.server_address[1]
        if url.path == "/health":
            if UNHEALTHY:
                self._send(500, "unhealthy build\n")
            elif time.monotonic() - STARTED < WARMUP:
                self._send(503, "warming up\n")
            else:
                self._send(200, "ok\n")
        elif LYING:
            self._send(500, f"internal error in {VERSION}\n")
        elif url.path == "/version":
            self._send(200, VERSION + "\n")
        elif url.path == "/ws":
            self._websocket()
        elif url.path == "/slow":
            seconds = float(parse_qs(url.query).get("s", ["1.5"])[0])
            time.sleep(min(seconds, 30.0))
            self._send(200, f"slow {VERSION}\n")
        else:
            self._send(200, f"hello from {VERSION} ({SLOT}:{port})\n")

    # ------------------------------------------------------------ WebSocket (RFC 6455)
    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._send(426, "a WebSocket handshake is expected here\n")
            return
        accept = base64.b64encode(hashlib.sha1(  # noqa: S324 - the protocol's own hash
            (key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-App-Version", VERSION)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True  # the socket is the WebSocket's until it closes
        ws = WebSocket(self.connection, self.server)
        try:
            ws.send_text(f"hello {VERSION} {SLOT}")
            while True:
                opcode, payload = ws.receive()
                if opcode == 0x1:
                    ws.send_text(f"{VERSION} {SLOT} {payload.decode(errors='replace')}")
                elif opcode == 0x9:
                    ws.send(0xA, payload)
                elif opcode == 0x8:
                    ws.send(0x8, payload[:2])
                    return
        except (StopServing, EOFError, OSError):
            return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        self._send(200, f"{VERSION} {len(body)}\n")


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class StopServing(Exception):
    """The server is stopping gracefully: the WebSocket said goodbye (1001)."""


class WebSocket:
    """Frames over an accepted socket: reads the client's masked frames, sends unmasked
    ones. Polls so that a graceful stop can close it with 1001 (going away)."""

    def __init__(self, sock: socket.socket, server: Server) -> None:
        self.sock = sock
        self.server = server
        self.buffer = b""

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if self.server.stopping:
                self.send(0x8, struct.pack("!H", 1001))
                raise StopServing
            readable, _, _ = select.select([self.sock], [], [], 0.2)
            if not readable:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> tuple[int, bytes]:
        """One whole message: (opcode, payload), continuation frames joined."""
        message, first = b"", 0
        while True:
            b0, b1 = self._read(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            if length > 1 << 20:
                raise EOFError("frame too large")
            mask = self._read(4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read(length)))
            if opcode >= 0x8:  # control frames come whole, even between fragments
                return opcode, payload
            first = first or opcode
            message += payload
            if b0 & 0x80:
                return first, message

    def send_text(self, text: str) -> None:
        self.send(0x1, text.encode())

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else
                                         b"\x7e" + struct.pack("!H", n) if n < 1 << 16 else
                                         b"\x7f" + struct.pack("!Q", n))
        self.sock.sendall(head + payload)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # graceful stop joins in-flight handler threads
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stopping = False
        self.connections: set[Handler] = set()
        self.lock = threading.Lock()

    def track(self, handler: Handler, open_: bool) -> None:
        with self.lock:
            (self.connections.add if open_ else self.connections.discard)(handler)

    def close_idle(self) -> None:
        """Graceful stop: idle keep-alive connections are closed now (a thread blocked
        reading the next request would otherwise hold the exit until the client hangs
        up); busy ones finish their request first."""
        self.stopping = True
        with self.lock:
            idle = [h for h in self.connections if not h.busy]
        for handler in idle:
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "8081"))
    server = Server((os.environ.get("BIND", "127.0.0.1"), port), Handler)

    def on_term(signum: int, frame: object) -> None:
        if not GRACEFUL:
            os._exit(0)
        # shutdown() blocks until serve_forever returns, so it must run off the main thread
        def stop() -> None:
            server.shutdown()
            server.close_idle()
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"demo {VERSION} listening on {server.server_address}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()  # joins in-flight request threads: graceful drain
    print(f"demo {VERSION} stopped", flush=True)


if __name__ == "__main__":
    main()
