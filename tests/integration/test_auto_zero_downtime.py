"""Zero failed requests with no `nginx.mode` set (issue 9: "zero by default"), for `make test`.

The bounded twin of bench/zero_downtime.py's `default` and `include-tls` classes, through
the same runner (testkit/underload.py): a project whose bluegreen.toml has no mode line, on
an nginx that loads the lua module, and the same project in the include-only integration
inside a user's own TLS server block, the load client on https checking a certificate
openssl made for the run. Six operations in a row under load each. Auto must choose lua
from the first deploy on (the include-only setup used to start in reload mode, because the
user's server includes snippets the first deploy has not written yet; the second deploy
then reloaded nginx under load), so no reload may happen while the load runs, and no
request may fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit import underload

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                       reason="no nginx"),
    pytest.mark.skipif(
        not Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists(),
        reason="no libnginx-mod-http-lua"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl"),
]

OPS = 6


@pytest.mark.parametrize("mode", underload.AUTO_MODES)
def test_no_mode_set_is_lua_and_loses_nothing(tmp_path: Path, mode: str) -> None:
    run = underload.run_bluegreen(mode, ops=OPS, workdir=tmp_path / "zd", warmup=1.5,
                                  cooldown=1.5, drain_timeout=30.0, deadline=90.0,
                                  progress=None)
    detail = underload.report(run)
    assert run.chosen_mode == "lua", detail
    assert not run.stopped_early and len(run.ops) == OPS, detail
    assert all(op.as_expected for op in run.ops), detail
    res = run.result
    for cls, st in res.per_class().items():
        assert st.requests > 0, f"{cls}: no request was sent\n{detail}"
        assert st.failures == 0, f"{cls}: {st.failures} failed {st.kinds}\n{detail}"
    assert run.nginx_reloads == 0, detail  # the first deploy already rendered lua mode
    assert run.analysis["versions_match"], detail
    assert not run.nginx_errors, "\n".join(run.nginx_errors[-10:])
