"""Send requests through the demo's nginx until told to stop; report what a user saw.

Runs beside `fab deploy` in the demo to show that a blue-green switch drops nothing.
Usage: demo_traffic.py URL STOPFILE   (stops when STOPFILE exists, or after 120 s)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import requests


def main() -> int:
    url, stop = sys.argv[1], Path(sys.argv[2])
    session = requests.Session()  # keep-alive, like a browser or an API client
    ok = failed = 0
    versions: list[str] = []
    deadline = time.monotonic() + 120
    while not stop.exists() and time.monotonic() < deadline:
        try:
            r = session.get(url, timeout=5)
            if r.status_code == 200:
                ok += 1
                v = r.headers.get("X-App-Version", "?")
                if not versions or versions[-1] != v:
                    versions.append(v)
            else:
                failed += 1
        except requests.RequestException:
            failed += 1
        time.sleep(0.005)
    print(f"    traffic during the deploy: {ok + failed} requests, {failed} failed, "
          f"versions seen in order: {' -> '.join(versions) or '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
