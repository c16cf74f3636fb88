"""The test infrastructure itself, against real nginx, sshd and network namespaces.

If these fail, every integration test built on the fixtures is suspect, so each one
checks an observable effect (HTTP bodies, PIDs in /proc, namespace lists), not just
that a call returned.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
import requests

from testkit.netns import NetnsHost, NetnsSshHost, list_namespaces
from testkit.nginx import NginxError, PrivateNginx
from testkit.ports import free_port, port_open, wait_port
from testkit.procs import descendant_pids, pid_alive, stop_pid, wait_until
from testkit.sshd import TestSshd

pytestmark = pytest.mark.integration


@pytest.fixture
def http() -> Iterator[requests.Session]:
    # trust_env=False: an http_proxy in the environment must never see test traffic.
    session = requests.Session()
    session.trust_env = False
    try:
        yield session
    finally:
        session.close()


def server_block(port: int, body: str, extra: str = "") -> str:
    return (
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f"{extra}"
        f'    location / {{ return 200 "{body}"; }}\n'
        "}\n"
    )


def http_get_over_channel(channel: paramiko.Channel, host: str) -> bytes:
    channel.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    chunks = []
    while True:
        chunk = channel.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# ----- ports ------------------------------------------------------------------------


def test_free_port_is_bindable_and_wait_port_times_out_with_message() -> None:
    port = free_port()
    assert port != free_port()  # never handed out twice in one process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        with pytest.raises(TimeoutError, match=rf"(?s)127\.0\.0\.1:{port}.*the-log-text"):
            wait_port("127.0.0.1", port, timeout=0.3, describe=lambda: "the-log-text")
        sock.listen()
        wait_port("127.0.0.1", port, timeout=2)


# ----- nginx ------------------------------------------------------------------------


def test_nginx_serves_conf_d_and_reload_swaps_workers(
    private_nginx: PrivateNginx, http: requests.Session
) -> None:
    master = private_nginx.master_pid
    assert master is not None and pid_alive(master)
    first_workers = private_nginx.worker_pids()
    assert first_workers, "a started nginx must have workers"
    # Empty conf.d: nginx runs but nothing listens on the front port yet.
    assert not private_nginx.is_serving()

    private_nginx.write_conf_d("app.conf", server_block(private_nginx.port, "hi"))
    private_nginx.reload()
    response = http.get(private_nginx.url(), timeout=5)
    assert (response.status_code, response.text) == (200, "hi")
    assert private_nginx.master_pid == master  # a reload keeps the master
    assert not set(private_nginx.worker_pids(include_shutting_down=False)) & set(first_workers)

    private_nginx.write_conf_d("app.conf", server_block(private_nginx.port, "bye"))
    private_nginx.reload()
    assert http.get(private_nginx.url(), timeout=5).text == "bye"
    assert "[emerg]" not in private_nginx.error_log_text()


def test_nginx_bad_config_is_refused_and_old_config_keeps_serving(
    private_nginx: PrivateNginx, http: requests.Session
) -> None:
    private_nginx.write_conf_d("app.conf", server_block(private_nginx.port, "good"))
    private_nginx.reload()

    private_nginx.write_conf_d("broken.conf", "server { listen 127.0.0.1:1; bogus_directive; }\n")
    with pytest.raises(NginxError, match="bogus_directive"):
        private_nginx.test_config()
    with pytest.raises(NginxError, match="bogus_directive"):
        private_nginx.reload()
    assert http.get(private_nginx.url(), timeout=5).text == "good"

    # `nginx -s quit` parses the config too, so it fails now; stop() must still be quick
    # and leave nothing behind.
    master = private_nginx.master_pid
    workers = private_nginx.worker_pids()
    started = time.monotonic()
    private_nginx.stop()
    assert time.monotonic() - started < 3
    assert master is not None and not any(pid_alive(p) for p in [master, *workers])


def test_nginx_reload_detects_errors_only_seen_when_applied(
    private_nginx: PrivateNginx, http: requests.Session
) -> None:
    # `nginx -t` and `-s reload` both pass a listen on a busy port; only the error log
    # tells. reload() must notice instead of waiting for workers that never come.
    private_nginx.write_conf_d("app.conf", server_block(private_nginx.port, "good"))
    private_nginx.reload()
    with socket.socket() as squatter:
        busy = free_port()
        squatter.bind(("127.0.0.1", busy))
        squatter.listen()
        private_nginx.write_conf_d("busy.conf", server_block(busy, "never"))
        private_nginx.test_config()
        with pytest.raises(NginxError, match="Address already in use"):
            private_nginx.reload(timeout=5)
    assert http.get(private_nginx.url(), timeout=5).text == "good"


def test_nginx_stop_leaves_no_processes(tmp_path: Path, http: requests.Session) -> None:
    nginx = PrivateNginx(tmp_path / "nginx", worker_processes=2)
    nginx.write_conf_d("app.conf", server_block(nginx.port, "up"))
    with nginx:
        assert http.get(nginx.url(), timeout=5).text == "up"
        master = nginx.master_pid
        # the master forks its workers one by one: the second may not exist yet
        wait_until(lambda: len(nginx.worker_pids()) == 2, 10, "nginx's second worker")
        workers = nginx.worker_pids()
        assert master is not None and len(workers) == 2
        # cmd_prefix is what the deploy tool runs; it must address this very nginx.
        assert nginx.cmd_prefix.split()[1:5] == ["-p", f"{nginx.prefix}/", "-c", str(nginx.conf)]
    assert not any(pid_alive(p) for p in [master, *workers])
    assert not nginx.pid_file.exists()
    assert not port_open("127.0.0.1", nginx.port)
    nginx.stop()  # idempotent


def test_nginx_lua_module_loads(private_nginx_lua: PrivateNginx, http: requests.Session) -> None:
    private_nginx_lua.write_conf_d(
        "lua.conf",
        "server {\n"
        f"    listen 127.0.0.1:{private_nginx_lua.port};\n"
        '    location / { content_by_lua_block { ngx.say("lua ", 40 + 2) } }\n'
        "}\n",
    )
    private_nginx_lua.reload()
    assert http.get(private_nginx_lua.url(), timeout=5).text == "lua 42\n"


# ----- sshd -------------------------------------------------------------------------


def test_sshd_exec_and_direct_tcpip_with_verified_host_key(
    sshd: TestSshd, private_nginx: PrivateNginx
) -> None:
    private_nginx.write_conf_d("app.conf", server_block(private_nginx.port, "via-tunnel"))
    private_nginx.reload()
    assert sshd.known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")

    client = sshd.connect()
    try:
        _, stdout, _ = client.exec_command("echo ok; id -u")
        assert stdout.read().decode().split() == ["ok", "0"]
        assert stdout.channel.recv_exit_status() == 0

        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_channel(
            "direct-tcpip", ("127.0.0.1", private_nginx.port), ("127.0.0.1", 0), timeout=10
        )
        try:
            reply = http_get_over_channel(channel, "127.0.0.1")
        finally:
            channel.close()
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(b"via-tunnel")
    finally:
        client.close()


def test_sshd_rejects_changed_and_unknown_host_keys(sshd: TestSshd, tmp_path: Path) -> None:
    wrong = sshd.wrong_known_hosts(tmp_path / "wrong_known_hosts")
    assert wrong.read_text().split()[0] == f"[127.0.0.1]:{sshd.port}"
    with pytest.raises(paramiko.BadHostKeyException):
        sshd.connect(known_hosts=wrong)

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        sshd.connect(known_hosts=empty)


def test_sshd_stop_takes_connection_children_with_it(tmp_path: Path) -> None:
    server = TestSshd(tmp_path / "sshd").start()
    client = server.connect()
    try:
        _, stdout, _ = client.exec_command("echo $$; sleep 60")
        shell_pid = int(stdout.readline())
        listener = server.pid
        assert listener is not None
        children = descendant_pids(listener)
        assert shell_pid in children  # the remote shell descends from our sshd
        server.stop()
        assert not any(pid_alive(p) for p in [listener, *children])
    finally:
        client.close()
        server.stop()
    assert not port_open("127.0.0.1", server.port)


# ----- network namespaces -----------------------------------------------------------


def test_netns_hosts_are_separate_ssh_hosts(
    netns_hosts: Callable[[int], list[NetnsSshHost]],
) -> None:
    hosts = netns_hosts(2)
    addresses = [h.address for h in hosts]
    assert len(set(addresses)) == 2
    for host, other in zip(hosts, reversed(hosts), strict=True):
        assert host.sshd.port == 22
        assert host.sshd.known_hosts.read_text().startswith(f"{host.address} ssh-ed25519 ")
        client = host.sshd.connect()
        try:
            _, stdout, _ = client.exec_command("ip -4 -o addr show")
            seen = stdout.read().decode()
        finally:
            client.close()
        # Each host sees only its own network stack: its address and loopback.
        assert f"inet {host.address}/24" in seen
        assert "inet 127.0.0.1/8" in seen
        assert other.address not in seen
        assert host.root.is_dir()


def test_nginx_in_root_namespace_proxies_into_a_namespace(
    netns_hosts: Callable[[int], list[NetnsSshHost]],
    private_nginx: PrivateNginx,
    tmp_path: Path,
    http: requests.Session,
) -> None:
    (host,) = netns_hosts(1)
    docroot = tmp_path / "docroot"
    docroot.mkdir()
    (docroot / "index.html").write_text(f"served from {host.label}\n")
    app_port = 8000
    server = host.netns.start(
        [
            sys.executable,
            "-m",
            "http.server",
            str(app_port),
            "--bind",
            "0.0.0.0",
            "--directory",
            str(docroot),
        ],
        tmp_path / "http-server.log",
    )
    try:
        wait_port(host.address, app_port, timeout=10, alive=lambda: pid_alive(server.pid))
        # The app listens only inside the namespace: the root namespace's loopback has
        # nothing there unless the port happened to be taken by something else.
        private_nginx.write_conf_d(
            "proxy.conf",
            f"upstream app {{ server {host.address}:{app_port}; }}\n"
            "server {\n"
            f"    listen 127.0.0.1:{private_nginx.port};\n"
            "    location / { proxy_pass http://app; }\n"
            "}\n",
        )
        private_nginx.reload()
        response = http.get(private_nginx.url("/index.html"), timeout=5)
        assert (response.status_code, response.text) == (200, f"served from {host.label}\n")

        # The namespace's own loopback is up: reach the app as 127.0.0.1 from inside,
        # through the host's sshd, the way the deploy tool health-checks a slot.
        client = host.sshd.connect()
        try:
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_channel(
                "direct-tcpip", ("127.0.0.1", app_port), ("127.0.0.1", 0), timeout=10
            )
            try:
                reply = http_get_over_channel(channel, "127.0.0.1")
            finally:
                channel.close()
        finally:
            client.close()
        assert reply.startswith(b"HTTP/1.0 200")
        assert reply.endswith(f"served from {host.label}\n".encode())
    finally:
        stop_pid(server.pid)
    assert not pid_alive(server.pid)


def test_netns_destroy_kills_processes_and_removes_links(tmp_path: Path) -> None:
    from testkit.netns import netns_available

    ok, reason = netns_available()
    if not ok:
        pytest.skip(f"network namespaces unavailable: {reason}")
    host = NetnsHost("doomed")
    try:
        sleeper = host.start(["sleep", "300"], tmp_path / "sleep.log")
        assert pid_alive(sleeper.pid)
        assert host.pids() == [sleeper.pid]
        assert (
            host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout.count(host.address)
            == 1
        )
    finally:
        host.destroy()
    assert not pid_alive(sleeper.pid)
    assert host.name not in list_namespaces()
    assert not Path(f"/sys/class/net/{host.veth_root}").exists()
