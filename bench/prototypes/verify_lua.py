"""Check the lua-mode claims one by one on this nginx (about 15 s, no load generator).

  1. the control endpoint switches with no reload, and every new request follows;
  2. upstream keep-alive pools are keyed by peer: connections to the old port stay idle
     in the pool and are never used for the new port; the pool is reused (few sockets);
  3. the shared dict (live port) survives `nginx -s reload`;
  4. after a restart the live port comes from the rendered file (persistent truth);
  5. a reload of a file with an OLDER generation does not switch back; a newer one does;
  6. in-flight counters count long requests per port and return to 0;
  7. the control endpoint refuses unknown ports and non-POST switches.

Usage: .venv/bin/python -m bench.prototypes.verify_lua   (exit 0 when every check holds)
"""

from __future__ import annotations

import sys
import threading
import time

import requests

from bench.harness import DemoApps, LuaSwitcher, established_to, render, write_atomic
from testkit import REPO
from testkit.nginx import PrivateNginx

CHECKS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    CHECKS.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}  {detail}")


def versions(session: requests.Session, url: str, n: int) -> set[str]:
    return {session.get(url, timeout=5).headers.get("X-App-Version", "") for _ in range(n)}


def main() -> int:
    workdir = REPO / ".run" / "bench" / f"verify-lua-{int(time.time())}"
    nginx = PrivateNginx(workdir / "nginx", lua=True, worker_processes=2)
    apps = DemoApps(workdir)
    blue, green = apps.slots["blue"], apps.slots["green"]
    sw = LuaSwitcher(nginx, apps.slots)
    s = requests.Session()
    s.trust_env = False
    url = nginx.url("/")
    try:
        apps.start(blue, "v1")
        apps.start(green, "v2")
        sw.setup(blue.port)
        nginx.start()

        check("starts on the rendered port", versions(s, url, 20) == {"v1"},
              str(sw.status()))
        before_blue = established_to(blue.port)
        sw.switch(green.port)
        v = versions(s, url, 200)
        check("1. switch without reload: every new request goes to green", v == {"v2"}, str(v))
        check("2a. pool keyed by peer: idle blue connections kept, unused",
              established_to(blue.port) == before_blue and before_blue > 0,
              f"blue conns before={before_blue} after={established_to(blue.port)}")
        check("2b. pool reused: 200 requests used few green connections",
              0 < established_to(green.port) <= 4, f"green conns={established_to(green.port)}")

        nginx.reload()
        st = sw.status()
        check("3. shared dict survives nginx -s reload",
              st["live"] == green.port and versions(s, url, 20) == {"v2"}, str(st))

        nginx.stop()
        nginx.start()
        st = sw.status()
        check("4. restart comes up on the rendered (recorded) live port",
              st["live"] == green.port and versions(s, url, 20) == {"v2"}, str(st))

        ctx = sw._ctx(blue.port)
        write_atomic(sw.path, render(sw.template, **{**ctx, "generation": 1}))
        nginx.reload()
        v = versions(s, url, 20)
        check("5a. reload of an OLDER rendering does not switch back", v == {"v2"}, str(v))
        write_atomic(sw.path, render(sw.template, **sw._ctx(blue.port)))
        nginx.reload()
        v = versions(s, url, 20)
        check("5b. reload of a NEWER rendering is the truth", v == {"v1"}, str(v))

        results: list[int] = []

        def slow() -> None:
            r = requests.get(nginx.url("/slow?s=1.5"), timeout=10)
            results.append(r.status_code)

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        sw.switch(green.port)  # the 3 long requests stay counted against blue
        mid = sw.status()["inflight"]
        for t in threads:
            t.join(10)
        end = sw.status()["inflight"]
        check("6. in-flight counted per port during long requests, back to 0 after",
              mid.get(str(blue.port)) == 3 and end.get(str(blue.port)) == 0
              and results == [200, 200, 200], f"mid={mid} end={end} statuses={results}")
        d = sw.drain(blue.port, 5.0)
        check("6b. drain on an idle slot returns at once", d.drained and d.waited < 0.5,
              f"waited={d.waited:.3f}s polls={d.polls}")

        r1 = s.post(f"{sw.control}/bluegreen/live?port=1", timeout=2)
        r2 = s.get(f"{sw.control}/bluegreen/live?port={blue.port}", timeout=2)
        check("7. control refuses unknown port (400) and GET (405)",
              r1.status_code == 400 and r2.status_code == 405,
              f"{r1.status_code} {r2.status_code}")
        errors = [ln for ln in nginx.error_log_text().splitlines()
                  if "[error]" in ln or "[alert]" in ln or "[emerg]" in ln]
        check("no error/alert in the nginx error log", not errors, "; ".join(errors[:3]))
    finally:
        nginx.stop()
        apps.stop_all()
    failed = [c for c in CHECKS if not c[1]]
    print(f"RESULT verify-lua {'ok' if not failed else 'FAIL'} "
          f"checks={len(CHECKS)} failed={len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
