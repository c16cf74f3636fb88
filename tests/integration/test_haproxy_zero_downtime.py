"""Zero failed requests with the haproxy router: 12 real `fab` operations under load.

The same runner as the nginx check (testkit/underload.py, tests/integration/
test_zero_downtime.py), with `traffic.router = "haproxy"` in front of the slots: a real
haproxy 2.6 (master-worker, the main config plus bluegreen's conf.d file), the demo app
with GRACEFUL=0 (it dies at once on SIGTERM), all four load classes, then one full cycle of
operations in a row: back-to-back deploys, switches, rollbacks warm and cold, and a deploy
of an unhealthy build that must be refused. 0 failed requests in every class, no haproxy
reload (every switch went through the admin socket), and nothing hidden by haproxy's own
retries (its servers' failed-connect, failed-response, retry and redispatch counters stay 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit import underload

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                       reason="no haproxy"),
]

OPS = 12  # one whole cycle: every kind of operation, the refused deploy and a cold rollback
# Floors for "the load actually ran", as in test_zero_downtime.py (far below what a 2-vCPU
# machine does, far above 0)
MIN_REQUESTS = {"ka_get": 300, "ka_post": 300, "fresh_get": 50, "slow": 12}
SLOW_SECONDS = 3.0  # see test_zero_downtime.py: long enough to be in flight at the drain


def test_haproxy_router_zero_failures_across_back_to_back_deploys(tmp_path: Path) -> None:
    run = underload.run_bluegreen("haproxy", ops=OPS, workdir=tmp_path / "zd", warmup=1.5,
                                  cooldown=1.5, drain_timeout=30.0, deadline=150.0,
                                  slow_seconds=SLOW_SECONDS)
    res, a = run.result, run.analysis
    detail = underload.report(run)
    print("\n" + detail)

    assert not run.stopped_early, detail
    kinds = [op.kind for op in run.ops]
    assert kinds == list(underload.CYCLE[:OPS]), kinds
    assert {"deploy", "switch", "rollback", "deploy-unhealthy"} <= set(kinds)
    assert all(op.as_expected for op in run.ops), detail

    per_class = res.per_class()
    for cls, st in per_class.items():
        assert st.failures == 0, f"{cls}: {st.failures} failed {st.kinds}\n{detail}"
    assert res.failed == 0, detail
    for cls, floor in MIN_REQUESTS.items():
        assert per_class[cls].requests >= floor, (
            f"{cls}: only {per_class[cls].requests} requests (want >= {floor})\n{detail}")

    lr = a["long_requests"]
    assert lr["in_flight_across_a_switch"] >= 3, detail
    # the drain was real: a deploy stopped a slot that still had long requests in flight
    # when its drain began, haproxy's per-server sessions kept it waiting, all answered
    waited = [op.drain for op in run.ops if op.drain.get("long_in_flight_at_drain_start")]
    assert waited, f"no deploy found long requests in flight to the slot it stopped\n{detail}"
    assert all(d["long_failed_in_flight"] == 0 for d in waited), detail
    assert a["fab_reported_requests_cut"] == 0, detail  # the drain never timed out
    assert run.nginx_reloads == 0, detail  # haproxy reloads: switches are runtime-only
    assert a["versions_match"], (a["versions_observed"], a["versions_expected"])
    assert not run.nginx_errors, "\n".join(run.nginx_errors[-10:])
