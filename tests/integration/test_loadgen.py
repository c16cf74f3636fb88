"""testkit.loadgen, the load client of the zero-failure check and benchmark: it must never
hide a failed request behind a retry, and its views of the records must add up."""

from __future__ import annotations

import socket
import threading

import pytest

from testkit import loadgen


def _closing_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accept, read one request, close without answering: every request must fail once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conns.append(conn)
            conn.recv(65536)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, conns


def test_no_retry_session_sends_each_request_once() -> None:
    srv, conns = _closing_server()
    try:
        port = srv.getsockname()[1]
        session = loadgen.no_retry_session()
        kinds = []
        for method in ("get", "post", "get", "post"):
            with pytest.raises(Exception) as info:
                session.request(method, f"http://127.0.0.1:{port}/", data=b"x", timeout=2)
            kinds.append(loadgen.error_kind(info.value))
        # one connection per request: urllib3 did not silently retry any of them
        assert len(conns) == 4
        assert set(kinds) <= {"RemoteDisconnected", "ConnectionResetError"}
    finally:
        srv.close()


def test_error_kind_of_refused_connection() -> None:
    with pytest.raises(Exception) as info:
        loadgen.no_retry_session().get("http://127.0.0.1:1/", timeout=2)
    assert loadgen.error_kind(info.value) == "ConnectionRefusedError"


def test_load_result_views() -> None:
    R = loadgen.Record
    recs = [R("ka_get", 0.0, 0.01, True, 200, "", "v1"),
            R("ka_post", 1.0, 1.02, False, 502, "HTTP 502", ""),
            R("ka_get", 2.0, 2.01, True, 200, "", "v2"),
            R("fresh_get", 2.5, 2.51, True, 200, "", "v1"),
            R("slow", 0.0, 1.5, True, 200, "", "v1")]
    res = loadgen.LoadResult(recs, windows=[(0.9, 1.1)], started=0.0, ended=3.0)
    assert res.total == 5 and res.failed == 1
    assert res.per_class()["ka_post"].kinds == {"HTTP 502": 1}
    assert res.versions() == ["v1", "v2", "v1"]
    sw = res.switch_vs_steady()
    assert sw["switch"]["n"] == 0 and sw["steady"]["n"] == 3  # failures are not latency
    assert "RESULT" in res.result_line() and "FAIL" in res.result_line()
