"""Helpers for the tests of the nginx shapes: auto mode, include-only over TLS, WebSockets.

A self-signed certificate is made with openssl at test time (never checked in), for a
name and for 127.0.0.1, so both bluegreen's check (SNI and Host = the name) and a test
client connecting by address can verify it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cert:
    cert: Path  # PEM certificate; being self-signed, it is its own CA file
    key: Path
    name: str


def make_cert(directory: Path, name: str = "shop.test") -> Cert:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return Cert(cert, key, name)


def drop_nginx_keys(toml: Path, *keys: str) -> None:
    """Remove `key = ...` lines from bluegreen.toml: a project that never set them."""
    text = toml.read_text()
    for key in keys:
        text = re.sub(rf"(?m)^\s*{re.escape(key)}\s*=.*\n", "", text)
    toml.write_text(text)


def set_nginx_keys(toml: Path, **values: str) -> None:
    """Set keys of [nginx] in bluegreen.toml (values are TOML text)."""
    drop_nginx_keys(toml, *values)
    text = toml.read_text()
    lines = "".join(f"{k} = {v}\n" for k, v in values.items())
    toml.write_text(text.replace("[nginx]\n", "[nginx]\n" + lines, 1))


def user_tls_server(snippets: Path, cert: Cert, port: int) -> str:
    """The user's own server block, as the README's include-only setup has it: TLS, another
    location of the user's own, and bluegreen's two includes (`snippets` is the path of
    bluegreen's files without their .server / .location suffix)."""
    return f"""
server {{
    listen 127.0.0.1:{port} ssl;
    server_name {cert.name};
    ssl_certificate {cert.cert};
    ssl_certificate_key {cert.key};
    include {snippets}.server;

    location / {{
        include {snippets}.location;
    }}
    location = /elsewhere {{
        return 200 "the user's own location\\n";
    }}
}}
"""


def include_tls_keys(cert: Cert, port: int, *, verify: bool = True) -> dict[str, str]:
    """The [nginx] keys (TOML text) of the include-only integration behind that server:
    bluegreen's post-switch check goes through its https front door, checking the
    certificate against the CA file (or, loopback only, not at all)."""
    keys = {"integration": '"include"', "listen": f'"127.0.0.1:{port} ssl"',
            "server_name": f'"{cert.name}"'}
    if verify:
        keys["tls_ca_file"] = f'"{cert.cert}"'
    else:
        keys["tls_verify"] = "false"
    return keys
