"""SSH exec: one remote command on bluegreen's open connection vs a bare `ssh host true`.

Through bluegreen's own SshHost: run('true'), an HTTP GET through a direct-tcpip channel,
an SFTP read, each on the open connection; beside it a whole `ssh host true` (connection
included). And what root's ~/.bashrc costs each remote command on this machine (bash
sources it for sshd), which the rig skips unless --with-bashrc. No target: this explains
where a switch's and a deploy's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.rig import Outcome, Rig, checked, fmt_s, main, median, say
from testkit.project import run as run_child


def measure(rig: Rig, args: argparse.Namespace) -> Outcome:
    from bluegreen import config
    from bluegreen.hosts import open_host

    proj = rig.project("lua", "lua")
    rig.deploy_new(proj)  # nginx serves the app: http_get has something to reach
    n = args.n
    cfg = config.load(str(proj.dir / "bluegreen.toml"), overrides=[], environ={})
    host = open_host(cfg.hosts.app[0], cfg)
    try:
        t = time.perf_counter()
        host.run("true")
        connect = time.perf_counter() - t
        runs, chans, reads = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            host.run("true")
            runs.append(time.perf_counter() - t)
            t = time.perf_counter()
            with contextlib.suppress(OSError):
                host.http_get(proj.nginx.port, "/", timeout=2)
            chans.append(time.perf_counter() - t)
            t = time.perf_counter()
            host.read(str(proj.nginx.conf))
            reads.append(time.perf_counter() - t)
        nodelay = host.conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        host.close()
    bare = [checked(rig.ssh("true"), "ssh true").wall for _ in range(n)]
    # sshd runs every command as `$SHELL -c '...'`; bash sources ~/.bashrc when it sees
    # SSH_CLIENT at shell level 1, so each remote command pays the user's rc files once
    plain = median([run_child(["bash", "-c", "true"]).wall for _ in range(3)])
    as_sshd = median([run_child(["env", "-u", "SHLVL", "SSH_CLIENT=127.0.0.1 1 22", "bash",
                                 "-c", "true"]).wall for _ in range(3)])
    shell = max(0.0, as_sshd - plain)
    res: dict[str, Any] = {
        "connect_and_first_run_s": connect, "run_true_s": median(runs),
        "http_get_s": median(chans), "sftp_read_s": median(reads),
        "ssh_true_s": median(bare), "tcp_nodelay": bool(nodelay),
        "remote_bash_start_s": shell, "bashrc_sourced": rig.with_bashrc}
    say(f"ssh-exec: connect + first run {fmt_s(connect)}; SshHost.run('true') "
        f"{fmt_s(res['run_true_s'])}, http_get via direct-tcpip {fmt_s(res['http_get_s'])}, "
        f"SFTP read {fmt_s(res['sftp_read_s'])} (open connection, "
        f"TCP_NODELAY={res['tcp_nodelay']}) vs bare `ssh host true` {fmt_s(res['ssh_true_s'])}")
    line = (f"ssh_exec: on an open connection run('true') {fmt_s(res['run_true_s'])}, "
            f"http_get {fmt_s(res['http_get_s'])}, SFTP read {fmt_s(res['sftp_read_s'])}; "
            f"connect + first run {fmt_s(connect)}; bare `ssh host true` "
            f"{fmt_s(res['ssh_true_s'])} (median of {n}); root's ~/.bashrc costs "
            f"{fmt_s(shell)} per remote command here, "
            f"{'SOURCED' if rig.with_bashrc else 'skipped'} in this run (--with-bashrc)")
    return Outcome({"ssh_exec": res}, line, True)


def run(argv: Sequence[str] | None = None) -> int:
    return main("ssh_exec", __doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    sys.exit(run())
