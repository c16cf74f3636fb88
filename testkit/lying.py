"""The two lying builds of issue 10, as release tarballs (bin/runner PORT), for the watch
window's tests on every router: one whose /health answers 200 while every page answers
500, and one that passes every health check, then dies one second after it started
serving real pages."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

# The crashing build's clock starts at its first real page, not at its first health check:
# on this shared machine a switch under load takes 0.4-1.5 s, so a clock started by the
# health check would fire inside the switch or its verify, which are not the window
# under test; a crash there fails the verify and is restored by it.
LYING_APP = r'''#!/usr/bin/env python3
import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CRASH = os.path.exists(os.path.join(os.path.dirname(__file__), "CRASH"))
serving_since = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", "lying")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, "ok\n")
        elif CRASH:
            if not serving_since:
                serving_since.append(time.monotonic())
                threading.Timer(1.0, lambda: os._exit(1)).start()
            self._send(200, "fine, for a second\n")
        else:
            self._send(500, "broken\n")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def build_lying(out_dir: Path, crash: bool) -> Path:
    """A release tarball (bin/runner PORT) of one lying build."""
    target = out_dir / f"lying-{'crash' if crash else '500'}.tar.gz"
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        files = [("bin/runner", LYING_APP.encode(), 0o755)]
        if crash:
            files.append(("bin/CRASH", b"", 0o644))
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    target.write_bytes(raw.getvalue())
    return target


