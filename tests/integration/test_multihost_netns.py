"""Two app hosts in network namespaces, each with its own sshd and root dir, behind ONE
private nginx in the root namespace (traffic host `local`).

Per-host evidence that nginx spreads requests over both hosts: inside each namespace, the
kernel's byte counters (`ss -ti` bytes_received) of the connections that come from the
root namespace's end of that host's veth (nginx's source address) to the live port. The
demo app keeps no access log and both namespaces report the same hostname, so the
counters are what can tell the hosts apart, and they stay at zero for a host nginx skips.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from testkit.netns import NetnsSshHost
from testkit.nginx import PrivateNginx
from testkit.procs import stop_pid
from testkit.project import Project, wait_for

pytestmark = pytest.mark.integration

REQUESTS = 24  # through nginx; round robin gives each host half


@dataclass
class Cluster:
    project: Project
    hosts: list[NetnsSshHost]

    @property
    def names(self) -> list[str]:
        return ["app1", "app2"]

    def served_bytes(self, host: NetnsSshHost, port: int) -> int:
        """Bytes the app on `host`:`port` received over connections from nginx."""
        out = host.netns.run(["ss", "-Htni", "state", "established",
                              f"( sport = :{port} )"]).stdout
        total = 0
        # one socket = an address line, then an indented line with the TCP info
        for addr_line, info in re.findall(r"^(\S.*)\n\s+(.*)$", out, re.M):
            peer = addr_line.split()[-1]
            if peer.rsplit(":", 1)[0] == host.netns.gateway:
                m = re.search(r"bytes_received:(\d+)", info)
                total += int(m.group(1)) if m else 0
        return total

    def spread(self, port: int, version: str) -> list[int]:
        """Send REQUESTS through nginx; all must come from `version`. Returns the bytes
        each host received meanwhile from nginx on `port`."""
        before = [self.served_bytes(h, port) for h in self.hosts]
        with requests.Session() as s:
            for _ in range(REQUESTS):
                r = s.get(self.project.nginx.url("/"), timeout=5)
                assert r.status_code == 200 and r.headers["X-App-Version"] == version, r.text
        after = [self.served_bytes(h, port) for h in self.hosts]
        return [a - b for a, b in zip(after, before, strict=True)]

    def direct(self, host: NetnsSshHost, port: int) -> str:
        """What the slot on `host` answers, asked straight over its veth (not via nginx)."""
        return requests.get(f"http://{host.address}:{port}/", timeout=5).text

    def stop_apps(self) -> None:
        """Stop the slots on every host root by their pidfiles (by PID)."""
        import os

        for h in self.hosts:
            for pidfile in h.root.glob("**/slots/*/pid"):
                try:
                    pid = int(pidfile.read_text().split()[0])
                    os.killpg(pid, 15)
                except (ValueError, IndexError, OSError):
                    continue
                stop_pid(pid, timeout=5)


@pytest.fixture
def cluster(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path],
            netns_hosts: Callable[[int], list[NetnsSshHost]]) -> Iterator[Cluster]:
    hosts = netns_hosts(2)
    # [ssh] has one key_file: let every host accept the first host's user key
    key = hosts[0].sshd.user_key
    for h in hosts[1:]:
        with open(h.sshd.authorized_keys, "a") as f:
            f.write(hosts[0].sshd.user_public_key.read_text())
    known = tmp_path / "known_hosts"
    known.write_text("".join(h.sshd.known_hosts.read_text() for h in hosts))
    tables = ",\n".join(f'  {{address = "{h.address}", root = "{h.root}", name = "app{i}"}}'
                        for i, h in enumerate(hosts, 1))
    proj = Project(tmp_path / "app", private_nginx, artifacts,
                   f'traffic = ["local"]\napp = [\n{tables},\n]',
                   extra_toml='[env]\nBIND = "0.0.0.0"\n',
                   ssh_toml=f'[ssh]\nuser = "root"\nkey_file = "{key}"\n'
                            f'known_hosts = "{known}"\n').write()
    c = Cluster(proj, hosts)
    try:
        yield c
    finally:
        c.stop_apps()
        proj.stop_everything()


def test_two_hosts_behind_one_nginx(cluster: Cluster) -> None:
    p, (h1, h2) = cluster.project, cluster.hosts
    out = p.deploy("v1").stdout
    assert "2 app host(s), 1 traffic host(s)" in out
    assert p.front_version() == "v1"
    p.deploy("v2")
    assert p.front_version() == "v2"

    conf = (p.nginx.conf_dir / "demo.conf").read_text()
    for h in (h1, h2):
        assert re.search(rf"^\s*server {re.escape(h.address)}:{p.green}\b", conf, re.M), conf
    # each host's own root holds its releases; the state lives on the traffic host
    for h in (h1, h2):
        assert len(list((h.root / "demo" / "releases").glob("v*-*"))) == 2
        assert cluster.direct(h, p.green).startswith(f"hello from v2 (green:{p.green})")
        assert cluster.direct(h, p.blue).startswith(f"hello from v1 (blue:{p.blue})")
    assert (p.dir / "srv" / "demo" / "state.json").exists()

    got = cluster.spread(p.green, "v2")
    total = sum(got)
    assert total > 0 and all(g >= total * 0.25 for g in got), \
        f"bytes from nginx per host (app1, app2): {got}"

    st = json.loads(p.fab("status", "--json").stdout)
    assert st["live"] == "green" and st["consistent"] is True
    assert set(st["app_hosts"]) == {"app1", "app2"}
    for name in ("app1", "app2"):
        for slot in ("green", "blue"):  # the live slot and the warm old one
            view = st["app_hosts"][name][slot]
            assert view["running"] and view["healthy"], (name, slot, view)
    local = st["traffic_hosts"]["local"]
    assert {k: local[k] for k in ("routes_to", "file_says", "seen", "release")} == {
        "routes_to": "green", "file_says": "green", "seen": "answered through the front door",
        "release": st["slots"]["green"]["release"]}
    assert not local.get("weight") and not local.get("maintenance") \
        and not local.get("preview")  # no canary, no maintenance, no preview route


def test_failure_on_one_host_keeps_both_on_the_old_release(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    p, (h1, h2) = cluster.project, cluster.hosts
    p.deploy("v1")
    assert p.front_version() == "v1"

    # a process bluegreen did not start holds the idle port inside app2's namespace only
    squat = ("import socket, time\n"
             "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             f"s.bind(('0.0.0.0', {p.green})); s.listen()\n"
             "time.sleep(120)\n")
    squatter = h2.netns.start([sys.executable, "-c", squat], tmp_path / "squatter.log")
    try:
        wait_for(lambda: _port_open(h2.address, p.green), 10, "the squatter to listen")
        assert not _port_open(h1.address, p.green)

        proc = p.deploy("v2", "--set", "process.port_free_timeout=0.5", check=False)
        assert proc.returncode != 0
        err = proc.stderr
        assert "phase=stop" in err and "host=app2" in err, err
        assert "host=app1" not in err
        assert f"port {p.green} is held by a process bluegreen did not start" in err
        assert "--> start" not in proc.stdout  # nothing was started on any host

        # traffic stays on v1, served by both hosts
        got = cluster.spread(p.blue, "v1")
        assert all(g > 0 for g in got), f"bytes from nginx per host: {got}"
        for h in (h1, h2):
            assert cluster.direct(h, p.blue).startswith("hello from v1")
        conf = (p.nginx.conf_dir / "demo.conf").read_text()
        assert f"{h1.address}:{p.blue}" in conf and f"{h2.address}:{p.blue}" in conf
        st = p.status()
        assert st["live"] == "blue" and st["consistent"]
        last = st["history"][-1]
        assert last["result"] == "failed" and last["phase"] == "stop"
        assert last["failed_host"] == "app2"
        assert squatter.poll() is None  # never killed by the deploy
    finally:
        stop_pid(squatter.pid)

    # without the squatter, the same command converges on both hosts
    p.deploy("v2")
    assert p.front_version() == "v2"
    for h in (h1, h2):
        assert cluster.direct(h, p.green).startswith(f"hello from v2 (green:{p.green})")
    got = cluster.spread(p.green, "v2")
    assert all(g > 0 for g in got), f"bytes from nginx per host: {got}"
    st = p.status()
    assert st["live"] == "green" and st["history"][-1]["result"] == "ok"


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False

