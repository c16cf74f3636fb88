"""Pick free TCP ports and wait for ports to accept connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

# The kernel may hand the same ephemeral port to two back-to-back bind(0) calls once the
# first socket is closed; remembering what we gave out keeps two servers started by the
# same test from being told to use the same port.
_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now.

    There is an unavoidable race between this check and the caller's bind; the caller
    should fail loudly (all our servers do) rather than hang if it loses.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"could not find an unused port on {host} in 50 tries")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    alive: Callable[[], bool] | None = None,
    describe: Callable[[], str] | None = None,
) -> None:
    """Wait until host:port accepts a TCP connection.

    `alive` lets the caller stop waiting as soon as the server process died instead of
    burning the whole timeout; `describe` supplies text (typically the server's log)
    appended to the error. Raises TimeoutError (or RuntimeError when `alive` turns false).
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if alive is not None and not alive():
            extra = describe() if describe is not None else ""
            raise RuntimeError(
                f"server for {host}:{port} exited before the port opened "
                f"(last connect error: {last_error})\n{extra}"
            )
        if time.monotonic() >= deadline:
            extra = describe() if describe is not None else ""
            raise TimeoutError(
                f"{host}:{port} did not accept TCP connections within {timeout:.1f}s "
                f"(last connect error: {last_error})\n{extra}"
            )
        time.sleep(0.05)
