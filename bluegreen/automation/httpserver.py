"""waitress, hardened against slow and greedy clients (issue 8: a slowloris trickle).

waitress reads requests in one event loop and hands only complete ones to its threads, so a
slow client costs a socket, not a thread. What it lacks:
  - a deadline for receiving a request: `channel_timeout` counts idle time, and a client
    sending one byte a second is never idle;
  - a fair answer to too many connections: at `connection_limit` it stops accepting, so
    100 trickling connections locked everyone else out (the defect seen).
This server adds, enforced every `cleanup_interval` seconds and on every accept:
  - header_timeout: a connection whose request (headers and body) is not complete within
    this many seconds of its first byte (of connecting, for a new connection) is closed;
  - connection_limit: over it, the connections that have waited longest for an incomplete
    request are closed to make room, so a new client is always accepted and a client that
    sends its request at once is always served; requests being answered are never cut;
  - client_connection_limit: the same, per client address (0: off; behind a proxy every
    client has the proxy's address, and the proxy should do this job);
and sets `channel_timeout` (idle keep-alive connections) and poll() instead of select()
(no 1024-descriptor ceiling). It logs a summary of what it closed at most every 10 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from bluegreen.automation.settings import ServiceSettings

log = logging.getLogger("bluegreen.automation.httpserver")

ACCEPTS_PER_WAKE = 64  # accept this many queued connections per event-loop turn
BACKSTOP = 100  # waitress' own limit sits this far above ours: only pending closes use it
REPORT_EVERY = 10.0  # seconds between summaries of closed connections
FD_RESERVE = 64  # descriptors kept for the job queue, logs and subprocesses


class GuardedChannel(HTTPChannel):
    """An HTTPChannel that knows since when its current request has been arriving."""

    server: GuardedServer

    def __init__(self, server: GuardedServer, sock: socket.socket, addr: Any,
                 adj: Adjustments, map: dict[int, Any] | None = None) -> None:
        # the clock starts at connect: a connection that never sends is as slow as any
        self.request_started: float | None = time.monotonic()
        self.client = str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
        self.evicted = False
        super().__init__(server, sock, addr, adj, map=map)
        server.track(self)

    def received(self, data: bytes) -> bool:
        partial = self.request
        if partial is None and self.request_started is None:
            self.request_started = time.monotonic()
        result = super().received(data)
        if self.request is None:
            self.request_started = None  # nothing half-received: the request is complete
        elif partial is not None and self.request is not partial:
            self.request_started = time.monotonic()  # one ended, the next one began
        return bool(result)

    def waiting_since(self) -> float | None:
        """When its incomplete request began, if the connection may be cut for it: not
        while a request of it is being answered, nor once it is already closing."""
        if self.requests or self.will_close or self.evicted:
            return None
        return self.request_started

    def del_channel(self, map: dict[int, Any] | None = None) -> None:
        self.server.untrack(self)
        super().del_channel(map)


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel

    def __init__(self, application: Callable[..., Any], *, limits: ServiceSettings,
                 **kw: Any) -> None:
        self.limits = limits
        self.by_client: dict[str, set[GuardedChannel]] = {}
        self.closing = 0  # channels marked to close that are not gone yet
        self.closed: Counter[str] = Counter()  # reason -> count, since the last report
        self.clients: Counter[str] = Counter()  # client -> closed, since the last report
        self.next_check = 0.0
        self.next_report = 0.0  # the first closes are reported at once, then every 10 s
        self.last_report = time.monotonic()
        super().__init__(application, **kw)

    # ---- bookkeeping -----------------------------------------------------------------

    def track(self, channel: GuardedChannel) -> None:
        self.by_client.setdefault(channel.client, set()).add(channel)

    def untrack(self, channel: GuardedChannel) -> None:
        group = self.by_client.get(channel.client)
        if group is not None:
            group.discard(channel)
            if not group:
                del self.by_client[channel.client]
        if channel.evicted:
            channel.evicted = False
            self.closing -= 1

    def evict(self, channel: GuardedChannel, reason: str) -> None:
        channel.evicted = True
        channel.will_close = True  # the loop closes it on its next turn (handle_write)
        self.closing += 1
        self.closed[reason] += 1
        self.clients[channel.client] += 1

    @staticmethod
    def _oldest(channels: Any, count: int) -> list[GuardedChannel]:
        waiting = [(since, ch) for ch in channels if (since := ch.waiting_since()) is not None]
        waiting.sort(key=lambda pair: pair[0])
        return [ch for _, ch in waiting[:count]]

    # ---- the rules -------------------------------------------------------------------

    def readable(self) -> bool:
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + self.limits.cleanup_interval
            self.expire(now)
            self.report(now)
        return bool(super().readable())

    def expire(self, now: float) -> None:
        cutoff = now - self.limits.header_timeout
        for channel in list(self.active_channels.values()):
            since = channel.waiting_since()
            if since is not None and since < cutoff:
                self.evict(channel, f"no complete request within {self.limits.header_timeout:g}s")

    def admit(self, channel: GuardedChannel) -> None:
        """Called for each new connection: make room by closing the slowest, if needed."""
        per_client = self.limits.client_connection_limit
        if per_client:
            group = self.by_client.get(channel.client, set())
            over = len(group) - sum(1 for ch in group if ch.evicted) - per_client
            if over > 0:
                for victim in self._oldest(group, over):
                    self.evict(victim, f"over client_connection_limit {per_client}")
        limit = self.limits.connection_limit
        over = len(self.active_channels) - self.closing - limit
        if over > 0:
            # a few more than needed, so the next accepts do not each scan every channel
            for victim in self._oldest(self.active_channels.values(), over + limit // 10):
                self.evict(victim, f"over connection_limit {limit}")

    def handle_accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                accepted = self.accept()
                if accepted is None:
                    return
                conn, addr = accepted
                self.set_socket_options(conn)
            except OSError:
                if self.adj.log_socket_errors:
                    self.logger.warning("server accept() threw an exception", exc_info=True)
                return
            channel = self.channel_class(self, conn, self.fix_addr(addr), self.adj,
                                         map=self._map)
            self.admit(channel)

    def report(self, now: float) -> None:
        if now < self.next_report or not self.closed:
            return
        self.next_report = now + REPORT_EVERY
        total = sum(self.closed.values())
        reasons = "; ".join(f"{n} {why}" for why, n in self.closed.most_common())
        busiest = ", ".join(f"{client} ({n})" for client, n in self.clients.most_common(3))
        log.warning("closed %d slow connections in the last %.0fs (%s); most from %s; "
                    "open now %d", total, now - self.last_report, reasons, busiest,
                    len(self.active_channels) - self.closing)
        self.last_report = now
        self.closed.clear()
        self.clients.clear()


def _raise_fd_limit(wanted: int) -> int:
    """Raise the soft descriptor limit towards `wanted`; return the connections it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return wanted if soft == resource.RLIM_INFINITY else soft


class Server:
    """One listening socket per address `listen` resolves to, one loop, one thread pool."""

    def __init__(self, app: Callable[..., Any], service: ServiceSettings, *,
                 max_body_bytes: int) -> None:
        limits = service
        allowed = _raise_fd_limit(service.connection_limit + BACKSTOP + FD_RESERVE)
        if allowed < service.connection_limit + BACKSTOP + FD_RESERVE:
            usable = max(1, allowed - BACKSTOP - FD_RESERVE)
            log.warning("the descriptor limit (%d) allows %d connections, not "
                        "connection_limit %d; raise LimitNOFILE", allowed, usable,
                        service.connection_limit)
            limits = dataclasses.replace(
                service, connection_limit=usable,
                client_connection_limit=min(service.client_connection_limit, usable))
        self.adj = Adjustments(
            host=service.listen, port=service.port, threads=service.threads,
            # waitress answers 413 from the headers, before reading (and caps chunked
            # bodies); HookApp checks again for any other WSGI server.
            max_request_body_size=max_body_bytes,
            channel_timeout=max(1, round(service.channel_timeout)),
            cleanup_interval=max(1, round(service.cleanup_interval)),
            connection_limit=limits.connection_limit + BACKSTOP,
            asyncore_use_poll=True, ident="bluegreen")
        self.map: dict[int, Any] = {}
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(self.adj.threads)
        self.servers = [GuardedServer(app, limits=limits, map=self.map,
                                      dispatcher=self.dispatcher, adj=self.adj, sockinfo=info)
                        for info in self.adj.listen]

    @property
    def url(self) -> str:
        first = self.servers[0]
        host = str(first.effective_host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{first.effective_port}"

    def run(self) -> None:
        wasyncore.loop(timeout=self.adj.asyncore_loop_timeout, map=self.map,
                       use_poll=self.adj.asyncore_use_poll)

    def close(self) -> None:
        self.dispatcher.shutdown()
        wasyncore.close_all(self.map)

