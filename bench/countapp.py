"""The demo app with a request log: what the speed measurements deploy.

The demo app (examples/demo/app/app.py), unchanged, behind a wrapper that logs every
request it answers with CLOCK_MONOTONIC (system-wide on Linux, so comparable with the
benchmark's own clock):

    bench-start <started> <ready_at>      app.STARTED and STARTED + WARMUP_SECONDS
    bench-req <t> <path> <status> <xff>   xff "-" = a direct probe (not through nginx)

`parse_app_log` turns that log into the health-probe timeline of one app process.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from testkit.demo import DEMO_APP

# run as a script, so its own directory (the release, with app.py) is first on sys.path
COUNT_APP = '''\
import time
import app
print(f"bench-start {app.STARTED:.6f} {app.STARTED + app.WARMUP:.6f}", flush=True)
def log_request(self, code="-", size="-"):
    try:
        code = int(code)
    except (TypeError, ValueError):
        pass
    xff = self.headers.get("X-Forwarded-For", "-") if self.headers else "-"
    print(f"bench-req {time.monotonic():.6f} {self.path} {code} {xff}", flush=True)
app.Handler.log_request = log_request
app.main()
'''
RUNNER = ('#!/bin/sh\nhere=$(cd "$(dirname "$0")/.." && pwd)\n'
          'exec python3 "$here/count_app.py" "$@"\n')


def build_artifact(out_dir: Path, version: str, blob_bytes: int = 0) -> Path:
    """demo app + request logger (+ a random, incompressible blob): .tar.gz, or .tar with a
    blob (gzip cannot shrink random bytes; it would only cost CPU on both ends)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"bench-{version}.tar" if blob_bytes else f"bench-{version}.tar.gz")
    tmp = target.with_name(target.name + ".tmp")

    def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 0
        tar.addfile(info, io.BytesIO(data))

    def fill(tar: tarfile.TarFile) -> None:
        add(tar, "app.py", DEMO_APP.read_bytes(), 0o644)
        add(tar, "count_app.py", COUNT_APP.encode(), 0o644)
        add(tar, "bin/runner", RUNNER.encode(), 0o755)
        add(tar, "VERSION", f"{version}\n".encode(), 0o644)
        if blob_bytes:
            blob = out_dir / f".blob-{version}"
            with open(blob, "wb") as f:  # 1 MB at a time: never the whole blob in memory
                left = blob_bytes
                while left:
                    n = min(left, 1 << 20)
                    f.write(os.urandom(n))
                    left -= n
            info = tarfile.TarInfo("blob.bin")
            info.size, info.mode, info.mtime = blob_bytes, 0o644, 0
            with open(blob, "rb") as f:
                tar.addfile(info, f)
            blob.unlink()

    if blob_bytes:
        with tarfile.open(tmp, "w") as tar:
            fill(tar)
    else:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:
            fill(tar)
    tmp.replace(target)
    return target


@dataclass(frozen=True)
class HealthTimeline:
    started: float  # app.STARTED (monotonic)
    ready_at: float  # STARTED + WARMUP_SECONDS: from here on /health answers 200
    probes: int  # direct /health probes up to and including the one that closed the streak
    probes_before_ready: int
    first_ok: float | None  # monotonic time of the first 200 probe
    seen: float | None  # the probe that completed `successes` consecutive 200s
    max_gap: float  # the longest gap between two probes while warming up

    @property
    def first_ok_delay(self) -> float | None:
        return None if self.first_ok is None else self.first_ok - self.ready_at

    @property
    def seen_delay(self) -> float | None:
        return None if self.seen is None else self.seen - self.ready_at

    @property
    def warmup_rate(self) -> float:
        """Probes per second the app received while it was still answering 503."""
        span = self.ready_at - self.started
        return self.probes_before_ready / span if span > 0 else float("nan")


def parse_app_log(text: str, path: str = "/health", successes: int = 2) -> HealthTimeline | None:
    """The health-probe timeline of one app process, from its bench-* log lines.

    Direct probes (no X-Forwarded-For) are the tool's; requests through nginx (the
    post-switch verify, load) carry X-Forwarded-For and are ignored.
    """
    started = ready = None
    probes: list[tuple[float, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "bench-start":
            started, ready = float(parts[1]), float(parts[2])
        elif len(parts) >= 5 and parts[0] == "bench-req" and parts[4] == "-":
            if parts[2].split("?")[0] == path and parts[3].isdigit():
                probes.append((float(parts[1]), int(parts[3])))
    if started is None or ready is None:
        return None
    streak, seen, first_ok, counted = 0, None, None, len(probes)
    for i, (t, code) in enumerate(probes):
        if code == 200:
            first_ok = t if first_ok is None else first_ok
            streak += 1
            if streak >= successes:
                seen, counted = t, i + 1
                break
        else:
            streak = 0
    used = probes[:counted]
    before = [t for t, code in used if code != 200]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    return HealthTimeline(started, ready, len(used), len(before), first_ok, seen,
                          max(gaps) if gaps else 0.0)
