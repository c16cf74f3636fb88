"""Short, bounded runs of the benchmark's own pieces: prototypes and the classic baseline.

The full benchmarks live in bench/ and run for minutes; these tests take about a minute
together and fail CI if the prototype templates stop passing `nginx -t`, if the no-reload
(lua) switch with drain stops delivering 0 failed requests, or if the classic baseline
stops running. (The load client's own tests: tests/integration/test_loadgen.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and
                                 not Path("/usr/sbin/nginx").exists(), reason="no nginx")
needs_lua = pytest.mark.skipif(not Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists(),
                               reason="no libnginx-mod-http-lua")


@needs_nginx
@needs_lua
@pytest.mark.integration
@pytest.mark.slow
def test_prototype_templates_pass_nginx_t(tmp_path: Path) -> None:
    from bench.harness import DemoApps, LuaSwitcher, ReloadSwitcher, render
    from testkit.nginx import PrivateNginx

    main = [ln for ln in render("main.conf.j2").splitlines() if ln and not ln.startswith("#")]
    for cls in (ReloadSwitcher, LuaSwitcher):
        nginx = PrivateNginx(tmp_path / cls.__name__, lua=cls is LuaSwitcher, main_extra=main)
        apps = DemoApps(tmp_path / f"apps-{cls.__name__}")
        switcher = cls(nginx, apps.slots)
        switcher.setup(apps.slots["blue"].port)
        nginx.test_config()


@needs_nginx
@needs_lua
@pytest.mark.integration
@pytest.mark.slow
def test_lua_switch_with_drain_has_zero_failures(tmp_path: Path) -> None:
    from bench.prototypes import experiment

    out = experiment.run("lua-drain", ops=4, workdir=tmp_path / "lua", warmup=1.0)
    assert out["total"] > 100
    assert out["per_class"]["slow"]["requests"] > 0
    assert out["failed"] == 0, out["summary"]
    assert out["versions"][-1] == "v5"


@needs_nginx
@pytest.mark.integration
@pytest.mark.slow
def test_classic_bench_runs_and_reports(tmp_path: Path) -> None:
    from bench import classic_bench

    params = classic_bench.ClassicParams(stop_sleep=0.2, health_initial_sleep=0.2,
                                         health_interval=0.2)
    result = classic_bench.run_classic(2, workdir=tmp_path / "classic", params=params,
                                       warmup=1.0)
    assert len(result.meta["ops"]) == 2
    assert result.total > 50
    assert result.versions()[-1] == "v3"
    # no assertion on failures: the classic pattern is expected to drop requests
