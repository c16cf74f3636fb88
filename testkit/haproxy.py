"""A private HAProxy for tests, plus the tiny slot backends and the load loop it is
tested with.

PrivateHaproxy: one master-worker haproxy (`-W -db`, so the master stays our Popen child
and never becomes a zombie of a non-reaping PID 1) under its own directory:
    haproxy.cfg     written by the test (usually rendered from nginx_templates/)
    haproxy.pid     the master's PID (`-p`), what reload_script signals
    app.state       the backend's server-state file
    stderr.log      the master's and workers' own output
With `include_dir=True` it is set up the way bluegreen's haproxy router expects a traffic
host: haproxy.cfg is the main config of `main_config()` (global with the admin socket at
level admin, defaults), and haproxy also loads conf.d/ (`-f haproxy.cfg -f conf.d`), where
bluegreen renders its file.
The admin socket lives in a short /tmp directory of its own: a unix socket path must fit
in 108 bytes and pytest's tmp paths can be long. `reload()` sends SIGUSR2 to the master
like `systemctl reload haproxy` does on Debian; `stop()` stops master and workers by PID.

SlotBackend: a threaded HTTP/1.1 server answering with its slot name (and the
X-Backend-Slot header), with /health, /slow?ms=N (GET or POST) and /status/N. It sets TCP_NODELAY
(see README: without it a keep-alive proxy adds ~40 ms per request through Nagle).

LoadLoop: a few keep-alive clients (GET, and POST) hammering the front door, counting
failures and which slot answered, until stopped; bounded in time by construction.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlparse

import requests

from testkit.ports import free_port
from testkit.procs import (
    child_pids,
    log_tail,
    pid_alive,
    start_process,
    stop_pids,
    wait_until,
)
from testkit.project import Project


class HaproxyError(RuntimeError):
    """haproxy refused a config, failed to start, or failed to reload."""


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def cli(admin_socket: str, line: str, timeout: float = 5.0) -> str:
    """One CLI line straight over the admin socket (a path, or ipv4@HOST:PORT), for
    assertions; the code under test goes through haproxy_api.cli_script instead."""
    if admin_socket.startswith("ipv4@"):
        host, _, port = admin_socket.removeprefix("ipv4@").rpartition(":")
        family, address = socket.AF_INET, (host, int(port))
    else:
        family, address = socket.AF_UNIX, admin_socket  # type: ignore[assignment]
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


class PrivateHaproxy:
    """One haproxy master under `prefix`; front port `port` (picked free when None).

    `tcp_admin`: the admin socket listens on a free 127.0.0.1 port instead of a unix
    socket (the config written must then use `admin_socket` as given here).
    """

    def __init__(self, prefix: Path, port: int | None = None, *, tcp_admin: bool = False,
                 include_dir: bool = False) -> None:
        self._prefix = Path(prefix).resolve()
        self._prefix.mkdir(parents=True, exist_ok=True)
        self._port = port if port is not None else free_port()
        self._sock_dir = Path(tempfile.mkdtemp(prefix="bg-hap-"))
        self._tcp_admin = f"ipv4@127.0.0.1:{free_port()}" if tcp_admin else ""
        self._binary = haproxy_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        # include_dir: haproxy also loads conf.d/ (`-f haproxy.cfg -f conf.d`), the way a
        # traffic host with bluegreen's files is set up; haproxy.cfg is then the main
        # config of `main_config()` (global with the admin socket, defaults)
        self.include_dir = include_dir
        if include_dir:
            self.conf_dir.mkdir(exist_ok=True)
            self.write_config(main_config(self.admin_socket))

    # ----- paths --------------------------------------------------------------------
    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def port(self) -> int:
        return self._port

    @property
    def conf(self) -> Path:
        return self._prefix / "haproxy.cfg"

    @property
    def conf_dir(self) -> Path:
        """Loaded after haproxy.cfg when `include_dir`: where bluegreen renders its file."""
        return self._prefix / "conf.d"

    @property
    def config_args(self) -> list[str]:
        files = [str(self.conf)] + ([str(self.conf_dir)] if self.include_dir else [])
        return [arg for f in files for arg in ("-f", f)]

    @property
    def pid_file(self) -> Path:
        return self._prefix / "haproxy.pid"

    @property
    def state_file(self) -> Path:
        return self._prefix / "app.state"

    @property
    def stderr_log(self) -> Path:
        return self._prefix / "stderr.log"

    @property
    def admin_socket(self) -> str:
        return self._tcp_admin or str(self._sock_dir / "admin.sock")

    @property
    def binary(self) -> str:
        return self._binary

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    # ----- config -------------------------------------------------------------------
    def write_config(self, text: str) -> Path:
        self.conf.write_text(text)
        return self.conf

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """`haproxy -c` on the config; the result (rc, output) is the caller's to judge."""
        return subprocess.run([self._binary, "-c", *self.config_args], capture_output=True,
                              text=True, timeout=30, check=False)

    # ----- lifecycle ----------------------------------------------------------------
    def _logs(self) -> str:
        return f"--- {self.stderr_log} ---\n{log_tail(self.stderr_log)}"

    def cli(self, line: str, timeout: float = 5.0) -> str:
        return cli(self.admin_socket, line, timeout)

    def worker_pid(self) -> int | None:
        """The worker answering on the admin socket now, or None."""
        try:
            out = self.cli("show info", timeout=2.0)
        except OSError:
            return None
        for line in out.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    @property
    def master_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and pid_alive(self._proc.pid) else None

    def start(self, timeout: float = 10.0) -> PrivateHaproxy:
        if self.master_pid is not None:
            raise HaproxyError(f"haproxy under {self._prefix} is already running")
        checked = self.test_config()
        if checked.returncode != 0:
            raise HaproxyError(f"haproxy -c failed:\n{checked.stdout}{checked.stderr}")
        self._proc = start_process(
            [self._binary, "-W", "-db", *self.config_args, "-p", str(self.pid_file)],
            self.stderr_log, cwd=self._prefix)
        proc = self._proc

        def ready() -> bool:
            if not pid_alive(proc.pid):
                raise HaproxyError(f"haproxy exited during start (rc={proc.poll()}):\n"
                                   + self._logs())
            return self.worker_pid() is not None

        try:
            wait_until(ready, timeout, lambda: "haproxy's admin socket never answered\n"
                       + self._logs())
        except BaseException:
            self.stop()
            raise
        return self

    def reload(self, timeout: float = 10.0) -> int:
        """SIGUSR2 to the master; wait until a new worker answers; return its PID."""
        master = self.master_pid
        if master is None:
            raise HaproxyError(f"haproxy under {self._prefix} is not running")
        before = self.worker_pid()
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGUSR2)
        new: list[int] = []

        def replaced() -> bool:
            pid = self.worker_pid()
            if pid is not None and pid != before:
                new.append(pid)
                return True
            return False

        wait_until(replaced, timeout, lambda: f"no new worker after SIGUSR2 (still {before})\n"
                   + self._logs())
        return new[0]

    def worker_pids(self) -> list[int]:
        """Every worker of the master: the current one and those a reload left serving."""
        master = self.master_pid
        return child_pids(master) if master is not None else []

    def log_since(self, offset: int, end: int | None = None) -> str:
        """The master's and workers' output from byte `offset` (to byte `end`)."""
        try:
            with self.stderr_log.open("rb") as f:
                f.seek(offset)
                data = f.read() if end is None else f.read(max(0, end - offset))
                return data.decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.stderr_log.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master and every worker (old ones from reloads too) by PID."""
        if self._proc is not None:
            master = self._proc.pid
            stop_pids([master, *child_pids(master)], timeout=timeout)
            self._proc = None
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> PrivateHaproxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main_config(admin_socket: str, extra_global: Sequence[str] = ()) -> str:
    """A traffic host's main haproxy.cfg for bluegreen's included files, as the README
    says to set it up: the admin socket at level admin in global, the reload tuning
    (hard-stop-after, close-spread-time), and defaults the included files inherit.
    `extra_global`: more lines for global (bench/router_price.py: `nbthread 1`)."""
    if admin_socket.startswith("ipv4@"):
        socket_line = f"stats socket {admin_socket} level admin expose-fd listeners"
    else:
        socket_line = f"stats socket {admin_socket} mode 600 level admin expose-fd listeners"
    return "\n".join([
        "global",
        f"    {socket_line}",
        "    stats timeout 10s",
        "    hard-stop-after 60s",
        "    close-spread-time 5s",
        *(f"    {line}" for line in extra_global),
        "",
        "defaults",
        "    mode http",
        "    option dontlognull",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "",
    ])


# ---------------------------------------------------------------- slot backends


class _SlotHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlotBackend

    def setup(self) -> None:
        super().setup()
        # One segment per answer and no Nagle wait on a kept-alive upstream connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend-Slot", self.server.slot)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.server.count(url.path)
        if url.path.startswith("/status/"):
            self._answer(int(url.path.rsplit("/", 1)[1]), self.server.slot.encode())
            return
        self._maybe_slow()
        self._answer(200, self.server.slot.encode())

    def _maybe_slow(self) -> None:
        url = urlparse(self.path)
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            # Sleep in small steps so a stopped backend does not hold a thread for long.
            deadline = time.monotonic() + ms / 1000
            while time.monotonic() < deadline and not self.server.stopping.is_set():
                time.sleep(0.01)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.server.count("POST " + urlparse(self.path).path)
        self._maybe_slow()
        self._answer(200, self.server.slot.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


class SlotBackend(ThreadingHTTPServer):
    """An app slot on 127.0.0.1:`port` that says which slot it is."""

    daemon_threads = True
    block_on_close = False
    # The stdlib default backlog is 5: health checks of several servers plus a load loop
    # overflow it, and a refused check marks a healthy slot down.
    request_queue_size = 128

    def __init__(self, slot: str, port: int | None = None) -> None:
        self.slot = slot
        self.stopping = threading.Event()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", port if port is not None else free_port()), _SlotHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        # haproxy closes health-check and aborted connections with a reset; that is
        # normal here, not worth a traceback on stderr.
        pass

    def count(self, what: str) -> None:
        with self._lock:
            self.hits[what] += 1

    def start(self) -> SlotBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- load loop


class LoadLoop:
    """Keep-alive clients against the front door until `stop()` (or `max_seconds`).

    `clients` GET loops and `post_clients` POST loops, each on one persistent
    http.client connection that is only replaced after an error. A request fails when
    it raises or answers anything but 200; failures keep their reason.
    """

    def __init__(self, port: int, *, clients: int = 2, post_clients: int = 1,
                 max_seconds: float = 120.0, pause: float = 0.0) -> None:
        self.port = port
        self.max_seconds = max_seconds
        self.pause = pause
        self.ok = 0
        self.failures: list[str] = []
        self.slots: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=("GET",), daemon=True)
                         for _ in range(clients)]
        self._threads += [threading.Thread(target=self._run, args=("POST",), daemon=True)
                          for _ in range(post_clients)]

    def _run(self, method: str) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                body = b"x" * 64 if method == "POST" else None
                conn.request(method, "/", body=body)
                resp = conn.getresponse()
                resp.read()
                slot = resp.getheader("X-Bluegreen-Slot") or "?"
                with self._lock:
                    if resp.status == 200:
                        self.ok += 1
                        self.slots[slot] += 1
                    else:
                        self.failures.append(f"{method} HTTP {resp.status} from {slot}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{method} {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    @property
    def total(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    def start(self) -> LoadLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------- a project on haproxy


@dataclass
class HaproxyProject(Project):
    """A user's app repository whose traffic host runs haproxy (`traffic.router =
    "haproxy"`): bluegreen renders into `haproxy.conf_dir` of a PrivateHaproxy started
    with `include_dir=True`. The inherited [nginx] table stays in the file, unused (the
    `nginx` given may be a PrivateNginx that is never started)."""

    haproxy: PrivateHaproxy | None = None
    haproxy_extra: str = ""  # more [haproxy] lines, written as is

    @property
    def hap(self) -> PrivateHaproxy:
        assert self.haproxy is not None, "HaproxyProject needs its haproxy"
        return self.haproxy

    @property
    def target(self) -> Path:
        return self.hap.conf_dir / f"{self.app}.cfg"

    def render_toml(self) -> str:
        h = self.hap
        _toml = json.dumps  # a JSON string is a TOML basic string; numbers read the same
        return super().render_toml() + "\n".join([
            "", "[traffic]", 'router = "haproxy"', "",
            "[haproxy]",
            f"command = {_toml(h.binary)}",
            f"target = {_toml(str(h.conf_dir) + '/{app}.cfg')}",
            f"main_config = {_toml(str(h.conf))}",
            f"listen = {_toml(f'127.0.0.1:{h.port}')}",
            f"admin_socket = {_toml(h.admin_socket)}",
            f"state_file = {_toml(str(h.prefix) + '/{app}.state')}",
            f"pid_file = {_toml(str(h.pid_file))}",
            f"drain_timeout = {float(self.drain_timeout):g}",
            self.haproxy_extra, ""])

    def front(self, path: str = "/") -> requests.Response:
        return requests.get(self.hap.url(path), timeout=5)

    def routed(self) -> dict[str, str]:
        """server name -> ready / drain / maint, as haproxy itself has it now."""
        from bluegreen.routers import haproxy_api as api

        text = self.hap.cli(f"show servers state {self.app}")
        return {s.server: s.admin for s in api.parse_servers_state(text, self.app)}

    def routed_slot(self) -> str:
        from bluegreen.routers import haproxy_api as api

        text = self.hap.cli(f"show servers state {self.app}")
        return api.routed_slot(api.parse_servers_state(text, self.app))
