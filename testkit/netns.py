"""Separate "hosts" on one machine: network namespaces joined to the root one by veth.

Each NetnsHost gets namespace `bgtest-<our pid>-<index>`, a veth pair whose root end
`bg<pid>r<index>` holds 198.18.<index>.1/24 and whose namespace end is named `eth0` and
holds 198.18.<index>.2/24 (RFC 2544 benchmarking range, never routed on the internet),
plus loopback up inside. The root namespace reaches each host directly over its veth;
nothing is forwarded or NATed, so a namespace can reach only the root namespace.

Namespaces share the filesystem with everything else: give each host its own root
directory in the deploy config (NetnsSshHost.root does).

Teardown order matters: deleting the namespace first leaves the root veth end alive
until the kernel's asynchronous netns cleanup runs, so a quick re-create of the same
index would collide. We delete the veth explicitly (which removes both ends at once),
then the namespace.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testkit.procs import pid_alive, start_process, stop_pids
from testkit.sshd import TestSshd

NS_PREFIX = "bgtest-"
NETWORK_PREFIX = "198.18"
_STALE_RE = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-(\d+|probe)$")

# Indices already used by this process; NetnsHost names embed our PID, so only the
# 198.18.<index>.0/24 addresses can collide with another concurrent run (checked below).
_USED_INDICES: set[int] = set()


def _ip(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`ip {' '.join(args)}` failed (rc={result.returncode}): {result.stderr.strip()}"
        )
    return result


def list_namespaces() -> list[str]:
    result = _ip("netns", "list", check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def netns_available() -> tuple[bool, str]:
    """Try to create a namespace with a veth pair, then delete both.

    Returns (True, "") or (False, reason) so callers can skip with the reason. Checks
    the veth too: some sandboxes allow `ip netns add` but refuse veth creation.
    """
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_NET_ADMIN)"
    name = f"{NS_PREFIX}{os.getpid()}-probe"
    veth = f"bg{os.getpid()}probe"[:15]
    try:
        _ip("netns", "add", name)
    except FileNotFoundError:
        return False, "the `ip` command (iproute2) is not installed"
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "del", veth)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return False, f"namespace ok, but cannot create a veth pair: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return True, ""


def _index_in_use(index: int) -> bool:
    addrs = _ip("-4", "-o", "addr", "show", check=False).stdout
    return f" {NETWORK_PREFIX}.{index}.1/" in addrs


def allocate_index() -> int:
    """The lowest 1..254 index unused by this process and unused on this machine."""
    for index in range(1, 255):
        if index not in _USED_INDICES and not _index_in_use(index):
            return index
    raise RuntimeError(f"all 254 {NETWORK_PREFIX}.N.0/24 test networks are in use")


def cleanup_stale() -> list[str]:
    """Delete `bgtest-<pid>-*` namespaces whose creating process is gone.

    A test run killed with SIGKILL cannot tear down; this lets the next run start
    clean. Namespaces of live runs (including our own) are left alone.
    """
    removed = []
    for name in list_namespaces():
        match = _STALE_RE.match(name)
        if match is None:
            continue
        owner = int(match.group(1))
        if owner == os.getpid() or pid_alive(owner):
            continue
        if match.group(2) != "probe":
            _ip("link", "del", f"bg{owner}r{match.group(2)}", check=False)
        _kill_namespace_pids(name)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _kill_namespace_pids(name: str, timeout: float = 5.0) -> None:
    out = _ip("netns", "pids", name, check=False).stdout
    stop_pids([int(p) for p in out.split() if p.isdigit()], timeout)


class NetnsHost:
    """A network namespace that looks like a separate host at 198.18.<index>.2.

    `label` is the caller's name for the host (e.g. "app1"); `name` is the namespace
    name for `ip netns exec` / TestSshd(netns=...). Created on construction.
    """

    def __init__(self, name: str, index: int | None = None) -> None:
        if index is None:
            index = allocate_index()
        if not 1 <= index <= 254:
            raise ValueError(f"index must be 1..254, got {index}")
        if index in _USED_INDICES:
            raise ValueError(f"index {index} is already used by another NetnsHost")
        self.label = name
        self.index = index
        pid = os.getpid()
        self._name = f"{NS_PREFIX}{pid}-{index}"
        self.veth_root = f"bg{pid}r{index}"  # <= 15 chars: IFNAMSIZ
        self.veth_ns = "eth0"  # lives in its own namespace, so no clash with the host's
        self._destroyed = False
        _USED_INDICES.add(index)
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        ns = self._name
        _ip("netns", "add", ns)
        # Creating the peer directly in the namespace avoids a rename and a window where
        # an "eth0" would exist in the root namespace.
        _ip(
            "link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_ns, "netns", ns
        )
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.veth_root)
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address}/24", "dev", self.veth_ns)
        _ip("-n", ns, "link", "set", self.veth_ns, "up")
        # Lets replies reach any root-namespace source address, not just the gateway.
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        """The host's address (namespace side), reachable from the root namespace."""
        return f"{NETWORK_PREFIX}.{self.index}.2"

    @property
    def gateway(self) -> str:
        """The root namespace's address on this host's link."""
        return f"{NETWORK_PREFIX}.{self.index}.1"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it (output captured)."""
        return subprocess.run(
            self.exec_argv(argv), capture_output=True, text=True, timeout=timeout, check=check
        )

    def start(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        """Start a background process inside the namespace (PID recorded, see procs).

        `ip netns exec` execs in place, so the returned PID is the command's own.
        """
        return start_process(self.exec_argv(argv), log_path)

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self._name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def destroy(self, timeout: float = 5.0) -> None:
        """Stop every process in the namespace by PID, delete the veth, delete the netns.

        Idempotent, and safe after a partial construction.
        """
        if self._destroyed:
            return
        if self._name in list_namespaces():
            _kill_namespace_pids(self._name, timeout)
        _ip("link", "del", self.veth_root, check=False)
        _ip("netns", "del", self._name, check=False)
        if self._name in list_namespaces():
            raise RuntimeError(f"network namespace {self._name} survived `ip netns del`")
        self._destroyed = True
        _USED_INDICES.discard(self.index)

    def __enter__(self) -> NetnsHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


@dataclass
class NetnsSshHost:
    """A namespace host with an sshd on <address>:22 and its own directory tree.

    `root` is the directory the deploy config should use as this host's filesystem
    root (namespaces share the real filesystem).
    """

    netns: NetnsHost
    sshd: TestSshd
    root: Path

    @property
    def label(self) -> str:
        return self.netns.label

    @property
    def address(self) -> str:
        return self.netns.address


class NetnsSshCluster:
    """Creates NetnsSshHosts under `workdir` and tears all of them down in `close()`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.hosts: list[NetnsSshHost] = []

    def add(self, label: str | None = None, *, sshd_timeout: float = 10.0) -> NetnsSshHost:
        label = label or f"host{len(self.hosts) + 1}"
        host = NetnsHost(label)
        try:
            hostdir = self.workdir / label
            sshd = TestSshd(hostdir / "sshd", host=host.address, netns=host.name)
            sshd.start(timeout=sshd_timeout)
        except BaseException:
            host.destroy()
            raise
        root = hostdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        entry = NetnsSshHost(netns=host, sshd=sshd, root=root)
        self.hosts.append(entry)
        return entry

    def add_many(self, count: int) -> list[NetnsSshHost]:
        return [self.add() for _ in range(count)]

    def close(self) -> None:
        """Stop every sshd and destroy every namespace; raises the first error after
        trying all of them, so one stuck host does not leak the others."""
        errors: list[BaseException] = []
        for entry in reversed(self.hosts):
            for step in (entry.sshd.stop, entry.netns.destroy):
                try:
                    step()
                except Exception as exc:  # collected, re-raised after the other hosts
                    errors.append(exc)
        self.hosts.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> NetnsSshCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
