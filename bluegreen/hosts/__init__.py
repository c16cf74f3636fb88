"""The only place that talks to a machine.

Every other module builds command strings (commands.py) or decides things (deploy.py), and
hands them to a Host. A Host runs a shell command with a timeout, copies a file, reads and
atomically writes small files, and makes an HTTP GET to a port on that machine's loopback
(through an SSH direct-tcpip channel for remote hosts, so slots never need a public port).

base.py: the Host interface; local.py: this machine; ssh.py: a remote host; dryrun.py: the
overlay of --dry-run. open_host picks the kind for a host spec.
"""

from __future__ import annotations

from bluegreen.config import Config, HostSpec
from bluegreen.hosts.base import SHELL_LIBS, Host, HostStats, Result
from bluegreen.hosts.dryrun import DryRunHost
from bluegreen.hosts.local import LocalHost
from bluegreen.hosts.ssh import SshHost

__all__ = ["SHELL_LIBS", "DryRunHost", "Host", "HostStats", "LocalHost", "Result", "SshHost",
           "open_host"]


def open_host(spec: HostSpec, cfg: Config) -> Host:
    return LocalHost(spec, cfg) if spec.is_local else SshHost(spec, cfg)
