"""The bundled example app, in-process: TCP_NODELAY on every accepted socket (the upstream
keep-alive trap) and its stdlib WebSocket endpoint, against the pinned `websockets` client."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

APP = Path(__file__).resolve().parents[2] / "examples" / "demo" / "app" / "app.py"


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_app", APP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(app: ModuleType) -> Iterator[Any]:
    srv = app.Server(("127.0.0.1", 0), app.Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    if not srv.stopping:
        srv.shutdown()
        srv.close_idle()
    thread.join(5)
    srv.server_close()


def test_accepted_sockets_have_tcp_nodelay(server: Any) -> None:
    with socket.create_connection(server.server_address, timeout=5) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in client.recv(4096)
        with server.lock:
            (handler,) = server.connections  # the keep-alive connection, still open
        nodelay = handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert nodelay != 0


def test_websocket_echoes_with_version_and_slot(server: Any, app: ModuleType) -> None:
    port = server.server_address[1]
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        assert ws.recv(timeout=5) == f"hello {app.VERSION} {app.SLOT}"
        for i in range(3):
            ws.send(f"m{i}")
            assert ws.recv(timeout=5) == f"{app.VERSION} {app.SLOT} m{i}"
        big = "x" * 70000  # a 64-bit length frame
        ws.send(big)
        assert ws.recv(timeout=5).endswith(big)
        ws.ping().wait(5)


def test_plain_get_on_the_websocket_path_is_refused(server: Any) -> None:
    with socket.create_connection(server.server_address, timeout=5) as client:
        client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"426" in client.recv(4096).split(b"\r\n")[0]


def test_a_graceful_stop_says_going_away(server: Any) -> None:
    port = server.server_address[1]
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        ws.recv(timeout=5)
        started = time.monotonic()
        server.shutdown()
        server.close_idle()
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert time.monotonic() - started < 2
