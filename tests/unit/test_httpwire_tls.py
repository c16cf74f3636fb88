"""TLS for the front-door check over anything socket-like: a paramiko channel is not a
socket (ssl.wrap_socket cannot take it), so httpwire speaks TLS through memory buffers.
These run a real TLS server on loopback with a certificate openssl makes at test time."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from bluegreen import config, httpwire
from bluegreen.hosts import LocalHost
from testkit.shapes import Cert, make_cert


class NotASocket:
    """Only what SocketLike promises, like paramiko's Channel: no fileno to wrap."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self._sock.recv(n)

    def close(self) -> None:
        self._sock.close()


class TlsServer:
    """Answers each connection with one HTTP/1.0 reply naming the SNI it was sent."""

    def __init__(self, cert: Cert) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.names: list[str | None] = []
        self.ctx.sni_callback = lambda s, name, c: self.names.append(name)  # type: ignore[assignment,misc]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    request = tls.recv(4096)
                    body = b"big " * 5000 if b"/big" in request else b"ok\n"
                    tls.sendall(b"HTTP/1.0 200 OK\r\nX-Bluegreen-Slot: green\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(cert: Cert) -> Iterator[TlsServer]:
    srv = TlsServer(cert)
    yield srv
    srv.close()


def get(server: TlsServer, tls: httpwire.Tls, path: str = "/health") -> httpwire.HttpReply:
    raw = NotASocket(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    stream = httpwire.TlsStream(raw, tls)
    return httpwire.exchange(stream, httpwire.build_request(path, tls.server_name))


def test_tls_over_a_non_socket_verifies_the_name_and_sends_sni(server: TlsServer,
                                                               cert: Cert) -> None:
    reply = get(server, httpwire.Tls("shop.test", ca_file=str(cert.cert)))
    assert reply.status == 200 and reply.header("X-Bluegreen-Slot") == "green"
    assert server.names == ["shop.test"]


def test_a_reply_larger_than_one_record_arrives_whole(server: TlsServer, cert: Cert) -> None:
    reply = get(server, httpwire.Tls("shop.test", ca_file=str(cert.cert)), "/big")
    assert len(reply.body) == 20000


def test_a_certificate_for_another_name_is_refused_as_an_oserror(server: TlsServer,
                                                                cert: Cert) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        get(server, httpwire.Tls("other.test", ca_file=str(cert.cert)))
    assert isinstance(err.value, OSError)  # what the front-door probe already catches


def test_a_self_signed_certificate_is_refused_by_the_system_trust_store(
        server: TlsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        get(server, httpwire.Tls("shop.test"))


def test_not_verifying_still_sends_sni(server: TlsServer) -> None:
    reply = get(server, httpwire.Tls("other.test", verify=False))
    assert reply.status == 200 and server.names == ["other.test"]


def test_local_host_speaks_tls_to_a_front_door(server: TlsServer, cert: Cert) -> None:
    cfg = config.from_dict({"app": "a", "start": "x {port}"})
    host = LocalHost(config.HostSpec("local"), cfg)
    reply = host.http_get(server.port, "/health", timeout=5, host_header="shop.test",
                          tls=httpwire.Tls("shop.test", ca_file=str(cert.cert)))
    assert reply.status == 200


def test_a_peer_that_is_not_tls_fails_cleanly(cert: Cert) -> None:
    plain = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = plain.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    try:
        raw = socket.create_connection(plain.getsockname(), timeout=5)
        with pytest.raises(OSError):
            httpwire.TlsStream(NotASocket(raw), httpwire.Tls("shop.test", str(cert.cert)))
    finally:
        plain.close()
