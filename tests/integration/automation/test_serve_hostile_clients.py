"""`bluegreen serve` under hostile clients (issue 8): a slowloris trickle must not stall it.

500 connections, from five loopback addresses, each sending the start of a request and then
one header byte a second, reconnecting whenever the server closes them (what a real attacker
does). Meanwhile `/healthz` is asked every quarter second and a real signed push is sent: both
must be answered within a second or two the whole time, and no trickling connection may
live much longer than `service.header_timeout`.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.integration.automation.conftest import Harness, github_payload

ATTACKERS = 500
SOURCES = [f"127.0.0.{n}" for n in range(2, 7)]  # 100 connections from each
HEADER_TIMEOUT = 2.0
DURATION = 8.0
MAX_HEALTHZ_SECONDS = 2.0


@dataclass
class Trickle:
    """The attacker: keeps ATTACKERS connections open, each trickling header bytes."""

    host: str
    port: int
    count: int = ATTACKERS
    sources: tuple[str, ...] = tuple(SOURCES)
    stop: threading.Event = field(default_factory=threading.Event)
    lifetimes: list[float] = field(default_factory=list)  # seconds, of connections we lost
    reconnects: int = 0
    peak_open: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.opened: dict[socket.socket, float] = {}

    def _open(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.sources[index % len(self.sources)], 0))
        sock.setblocking(False)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.errors.append(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.opened[sock] = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, index)

    def _lost(self, sock: socket.socket) -> int:
        index = self.selector.get_key(sock).data
        self.selector.unregister(sock)
        self.lifetimes.append(time.monotonic() - self.opened.pop(sock))
        sock.close()
        return int(index)

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            return sock.send(data) > 0
        except BlockingIOError:
            return True  # not connected yet, or the buffer is full: still alive
        except OSError:
            return False

    def run(self) -> None:
        for index in range(self.count):
            self._open(index)
        started = {sock: False for sock in self.opened}
        next_byte = time.monotonic()
        while not self.stop.is_set():
            self.peak_open = max(self.peak_open, len(self.opened))
            for key, _ in self.selector.select(timeout=0.05):
                sock = key.fileobj  # readable: the server closed it (EOF or reset)
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if sock.recv(4096):
                        continue  # an answer (say, 408); wait for the close
                index = self._lost(sock)
                started.pop(sock, None)
                self.reconnects += 1
                self._open(index)
            if time.monotonic() >= next_byte:
                next_byte = time.monotonic() + 1.0
                for sock in list(self.opened):
                    if not started.get(sock):
                        started[sock] = self._send(sock, b"POST /hooks/github HTTP/1.1\r\n")
                    elif not self._send(sock, b"X"):
                        self._lost(sock)
                        started.pop(sock, None)
        for sock in list(self.opened):
            self.selector.unregister(sock)
            sock.close()
        self.selector.close()

    def oldest(self) -> float:
        now = time.monotonic()
        return max((now - t for t in self.opened.values()), default=0.0)


def test_healthz_keeps_answering_under_500_slow_trickling_connections(
        harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config(header_timeout=HEADER_TIMEOUT)
    service = harness.start()
    host, port = service.url.removeprefix("http://").split(":")
    trickle = Trickle(host, int(port))
    attacker = threading.Thread(target=trickle.run, name="trickle", daemon=True)
    attacker.start()
    latencies: list[float] = []
    oldest_seen = 0.0
    pushed = None
    try:
        time.sleep(1.0)  # let all 500 connect and start trickling
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline:
            began = time.monotonic()
            reply = harness.http.get(f"{service.url}/healthz", timeout=10)
            latencies.append(time.monotonic() - began)
            assert reply.status_code == 200, reply.text
            if pushed is None and time.monotonic() > deadline - DURATION / 2:
                began = time.monotonic()
                pushed = harness.post_github(service, github_payload("main", sha))
                latencies.append(time.monotonic() - began)
            oldest_seen = max(oldest_seen, trickle.oldest())
            time.sleep(0.25)
    finally:
        trickle.stop.set()
        attacker.join(30)
    assert not trickle.errors[:5], trickle.errors[:5]
    assert trickle.peak_open >= ATTACKERS  # the attack really held 500 connections
    assert max(latencies) < MAX_HEALTHZ_SECONDS, (max(latencies), sorted(latencies)[-5:])
    assert len(latencies) >= DURATION / 0.5
    # The server closed trickling connections; none lived long past the header timeout.
    assert trickle.reconnects >= ATTACKERS, trickle.reconnects
    longest = max([*trickle.lifetimes, oldest_seen])
    assert longest < HEADER_TIMEOUT + 3.0, longest
    assert pushed is not None and pushed.status_code == 202, pushed.text if pushed else None
    assert harness.wait_job(pushed.json()["job"]).state == "succeeded"
    # Still healthy afterwards, and it said what it did (once in a while, not per socket).
    assert harness.http.get(f"{service.url}/healthz", timeout=5).status_code == 200
    log = service.log()
    assert "closed" in log and "slow" in log
    assert log.count("slow") < 100


def test_one_greedy_client_cannot_hold_more_than_its_share(harness: Harness) -> None:
    """80 trickling connections from one address, client_connection_limit 20: the newest
    20 stay, the rest are closed as they arrive, and everyone else is served."""
    harness.write_config(client_connection_limit=20, header_timeout=30.0)
    service = harness.start()
    host, port = service.url.removeprefix("http://").split(":")
    trickle = Trickle(host, int(port), count=80, sources=("127.0.0.9",))
    attacker = threading.Thread(target=trickle.run, name="trickle", daemon=True)
    attacker.start()
    try:
        time.sleep(1.0)
        for _ in range(8):
            began = time.monotonic()
            assert harness.http.get(f"{service.url}/healthz", timeout=10).status_code == 200
            assert time.monotonic() - began < MAX_HEALTHZ_SECONDS
            time.sleep(0.25)
    finally:
        trickle.stop.set()
        attacker.join(30)
    assert trickle.reconnects >= 60  # each newcomer pushed the oldest out
    log = service.log()
    assert "over client_connection_limit 20" in log and "127.0.0.9" in log
    assert "over connection_limit" not in log  # 20 open connections are far below 200
