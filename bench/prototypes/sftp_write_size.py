"""Finished experiment: which SFTP write size makes paramiko's upload keep up with scp.

Settled: bluegreen's SshHost.put writes 128 KiB pipelined requests to OpenSSH servers
(see FINDINGS.md, "SFTP write size"); bench/upload.py measures what ships. This reruns the
comparison: the same incompressible file over the same throwaway sshd, each variant on a
fresh connection with TCP_NODELAY, interleaved, beside OpenSSH scp (its connection set-up,
measured with an empty file, taken off):

    w32k    SFTPClient.put, paramiko's default: 32 KiB WRITE requests, pipelined. Python
            handles every request and its reply, and every 32 KiB write is two SSH
            packets (32797 bytes with its header > 32704 of channel payload)
    w128k   pipelined 128 KiB WRITE requests (what bluegreen ships)
    w255k   pipelined 255 KiB WRITE requests: OpenSSH's sftp-server takes up to 261120
            bytes a write (its limits@openssh.com max-write-length); fewer requests, but
            slower than 128 KiB here

Every copy is checked byte for byte (sha256).

Usage: .venv/bin/python -m bench.prototypes.sftp_write_size [--mib 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import paramiko

from testkit.project import run
from testkit.sshd import TestSshd

VARIANTS = {"w32k": 32768, "w128k": 131072, "w255k": 261120}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def put(sshd: TestSshd, src: Path, dst: str, request: int) -> float:
    client = paramiko.SSHClient()
    client.load_host_keys(str(sshd.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(sshd.host, port=sshd.port, username=sshd.user, **sshd.connect_kwargs)
    try:
        client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sftp = client.open_sftp()
        t = time.perf_counter()
        if request == 32768:
            sftp.put(str(src), dst, confirm=True)
        else:
            with open(src, "rb") as f, sftp.open(dst, "wb") as out:
                out.set_pipelined(True)
                out.MAX_REQUEST_SIZE = request  # instance attribute: this file only
                while data := f.read(request):
                    out.write(data)
            if sftp.stat(dst).st_size != src.stat().st_size:
                raise RuntimeError("size mismatch after upload")
        took = time.perf_counter() - t
        sftp.close()
        return took
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bluegreen-sftp-size-"))
    try:
        src = work / "blob.bin"
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        want = sha256(src)
        empty = work / "empty.bin"
        empty.write_bytes(b"")
        dst = work / "dst"
        dst.mkdir()
        times: dict[str, list[float]] = {k: [] for k in ("scp", "scp_empty", *VARIANTS)}
        with TestSshd(work / "sshd") as sshd:
            for _ in range(args.reps):
                for name, path in (("scp_empty", empty), ("scp", src)):
                    ran = run(sshd.scp_argv(path, str(dst / path.name)), timeout=300)
                    if ran.returncode != 0:
                        raise RuntimeError(f"scp failed: {ran.stderr}")
                    times[name].append(ran.wall)
                for name, request in VARIANTS.items():
                    copy = dst / f"{name}.bin"
                    times[name].append(put(sshd, src, str(copy), request))
                    if sha256(copy) != want:
                        raise RuntimeError(f"{name}: the copy differs from the original")
                    copy.unlink()
        med = {k: statistics.median(v) for k, v in times.items()}
        scp_xfer = max(1e-6, med["scp"] - med["scp_empty"])
        mb = args.mib * (1 << 20) / 1e6
        print(f"scp: {scp_xfer:.3f}s transfer ({med['scp']:.3f}s wall) = {mb / scp_xfer:.0f} MB/s")
        for name, request in VARIANTS.items():
            print(f"{name}: {med[name]:.3f}s = {mb / med[name]:.0f} MB/s, "
                  f"x{scp_xfer / med[name]:.2f} of scp's rate ({request // 1024} KiB writes)")
        best = max(VARIANTS, key=lambda k: scp_xfer / med[k])
        print(f"RESULT sftp_write_size: best {best}; " + " ".join(
            f"{k}=x{scp_xfer / med[k]:.2f}" for k in VARIANTS)
            + f" (vs scp, {args.mib} MiB, median of {args.reps})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
