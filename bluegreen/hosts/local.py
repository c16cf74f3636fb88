"""This machine, no SSH: `local` in hosts.app (the demo, and a traffic host that is the
machine bluegreen runs on)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import IO

from bluegreen import httpwire
from bluegreen.hosts.base import (
    Host,
    Result,
    as_text,
)
from bluegreen.httpwire import HttpReply


class LocalHost(Host):
    """This machine, through subprocess: the demo, and single-box setups."""

    def _exec(self, command: str, timeout: float) -> Result:
        try:
            proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            return Result(command, 124, as_text(exc.stdout), as_text(exc.stderr))
        return Result(command, proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: str) -> None:
        # A plain streaming copy; os.sendfile keeps a 100 MB artifact out of Python memory.
        with open(local, "rb") as src, open(remote, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                offset += os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)

    def _open(self, path: str, mode: str) -> IO[bytes]:
        return open(path, mode)

    def _mkdir(self, path: str) -> None:
        os.mkdir(path)

    def _size(self, path: str) -> int:
        return os.stat(path).st_size

    def _rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _remove(self, path: str, *, directory: bool = False) -> None:
        (os.rmdir if directory else os.remove)(path)

    def _chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def free_space(self, path: str) -> int | None:
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def http_get(self, port: int, path: str, *, timeout: float, address: str = "127.0.0.1",
                 headers: dict[str, str] | None = None, host_header: str = "localhost",
                 method: str = "GET", tls: httpwire.Tls | None = None) -> HttpReply:
        sock = socket.create_connection((address, port), timeout=timeout)
        sock.settimeout(timeout)
        stream = httpwire.TlsStream(sock, tls) if tls else sock
        return httpwire.exchange(stream, httpwire.build_request(path, host_header, headers,
                                                                method))
