"""The bundled example app: a tiny HTTP service with the shape of a real one.

Stdlib only, so the tarball runs on any host with python3. Endpoints:
  GET  /           -> "hello from <version> (<slot>:<port>)"
  GET  /health     -> 200 "ok" once warmed up (503 before, 500 if built unhealthy)
  GET  /version    -> the version string
  GET  /slow?s=1.5 -> answers after s seconds (long requests in flight during a switch)
  POST /echo       -> echoes the body (keep-alive POST traffic in the benchmark)

Behaviour is set by environment variables so the same build serves tests, demo and bench:
  BIND (127.0.0.1), WARMUP_SECONDS (0), UNHEALTHY (0/1, overridden by the VERSION file
  containing "unhealthy"), GRACEFUL (1): on SIGTERM stop accepting, finish in-flight
  requests, then exit. GRACEFUL=0 dies at once, like a default Spring Boot app, so the
  orchestrator, not the app, must make switches safe.
"""

from __future__ import annotations

import os
import signal
import socket
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
SLOT = os.environ.get("BLUEGREEN_SLOT", "?")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    server_version = "bluegreen-demo"
    disable_nagle_algorithm = True  # else every keep-alive answer waits ~40 ms for an ACK
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
        elif url.path == "/version":
            self._send(200, VERSION + "\n")
        elif url.path == "/slow":
            seconds = float(parse_qs(url.query).get("s", ["1.5"])[0])
            time.sleep(min(seconds, 30.0))
            self._send(200, f"slow {VERSION}\n")
        else:
            self._send(200, f"hello from {VERSION} ({SLOT}:{port})\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        self._send(200, f"{VERSION} {len(body)}\n")


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
