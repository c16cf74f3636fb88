"""After the switch, against recording fake hosts: the measured switch window, prepare now
and promote later (with a preview route), a canary by weight (its steps, its gate, its
revert, its journal), maintenance mode. No process, no network."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from bluegreen import config, deploy, render, views
from bluegreen.errors import BluegreenError
from bluegreen.routers.base import SlotCounters, bucket_delta, quantile
from bluegreen.routers.nginx_lua import cohort_in, parse_counters
from bluegreen.watch import Tally
from tests.unit.flows.test_flows import TARGET, Harness, artifact, release_of

TOKEN = "preview-token-0123456789abcdef"


def harness(tmp_path: Path, mode: str = "lua", **sections: dict) -> Harness:
    h = Harness(tmp_path)
    raw = {"app": "demo", "start": "{release}/bin/runner {port}", "paths": {"root": "/srv"},
           "health": {"timeout": 0.5, "interval": 0.01},
           "nginx": {"target": TARGET, "listen": "80", "verify_timeout": 0.3,
                     "drain_timeout": 0.1, "mode": mode,
                     **({"control_port": 9999} if mode == "lua" else {})},
           "hooks": {"dir": str(tmp_path / "hooks")}, "watch": {"seconds": 0}}
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    h.cfg = config.from_dict(raw)
    return h


def front(h: Harness, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request through the fake front door: (status, slot that answered)."""
    host = h.world.opener(h.cfg.traffic_hosts[0], h.cfg)
    reply = host.http_get(80, "/", timeout=1, headers=headers or {})
    return reply.status, reply.header("X-Bluegreen-Slot") or ""


def cohort_cookie(h: Harness, weight: int, canary: bool) -> dict[str, str]:
    return {"Cookie": f"{h.cfg.canary.cookie}={cohort_in(weight, canary=canary)}"}


# ---------------------------------------------------------------- the switch, measured

def test_every_lua_switch_says_and_records_what_users_saw(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")  # the lua file is loaded by this very switch: nothing to count from
    assert "failed requests during the switch: not measured (nginx had no bluegreen " \
           "counters before this switch" in h.out.getvalue()
    assert "requests" not in h.history()[-1] and "failed_requests" not in h.history()[-1]
    h.deploy("v2")
    out = h.out.getvalue()
    last = h.history()[-1]
    # verify's requests through the front door are what the fake nginx counted
    assert last["failed_requests"] == 0 and last["requests"] >= 1
    assert f"0 failed of {last['requests']:,} requests during the switch" in out
    deploy.rollback(h.run("rollback"))
    assert "during the switch" in h.out.getvalue()
    assert h.history()[-1]["failed_requests"] == 0
    text = views.format_history(h.history())
    assert "0 failed of" in text.splitlines()[-1]


def test_reload_mode_says_it_cannot_count_and_records_no_zeros(tmp_path: Path) -> None:
    h = harness(tmp_path, mode="reload")
    h.deploy("v1")
    h.deploy("v2")
    assert ("failed requests during the switch: not measured (reload mode keeps no "
            "per-request counters (lua mode does))") in h.out.getvalue()
    assert "failed_requests" not in h.history()[-1]


def test_a_breach_the_watch_reverts_still_records_the_switch_window(tmp_path: Path) -> None:
    h = harness(tmp_path, watch={"seconds": 1.0, "interval": 0.05, "min_requests": 5})
    h.deploy("v1")
    h.deploy("v2")
    h.world.broken.add(release_of(h, "v3"))
    with pytest.raises(BluegreenError):
        h.deploy("v3")
    last = h.history()[-1]
    assert last["auto_reverted"] is True and last["requests"] >= 1
    # the watch read the router's own counts of the new slot, not only its probes
    assert last["watch"]["source"] == "router counters + probes"


# ---------------------------------------------------------------- prepare now, promote later

def test_no_switch_leaves_a_ready_slot_a_preview_reaches_and_promote_switches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_PREVIEW", TOKEN)
    h = harness(tmp_path, preview={"token_env": "BG_PREVIEW"})
    h.deploy("v1")
    run = h.run("deploy")
    deploy.deploy(run, artifact(tmp_path, "v2"), "v2", no_switch=True)
    assert h.phases()[-1] == "ready ok" and "switch ok" not in h.phases()
    assert "prepared demo v2 in slot green (ready)" in h.out.getvalue()
    assert h.state()["live"] == "blue" and h.state()["slots"]["green"]["status"] == "ready"
    digest = hashlib.sha1(TOKEN.encode()).hexdigest()
    assert h.world.lua_preview["local"] == (h.cfg.slots.green, digest)
    assert TOKEN not in json.dumps(h.world.log)  # the token itself never reaches a host
    assert front(h) == (200, "blue")
    assert front(h, {"X-Bluegreen-Preview": TOKEN}) == (200, "green")
    assert front(h, {"X-Bluegreen-Preview": TOKEN[:-1] + "x"}) == (200, "blue")
    st = status_of(h)
    assert st["ready"] == "green" and st["traffic_hosts"]["local"]["preview"] == "green"
    assert "READY: green waits for `fab promote`" in views.format_status(st)
    ran = h.hook("post-deploy")
    deploy.promote(h.run("promote"))
    assert h.phases() == ["lock ok", "health ok", "switch ok", "verify ok", "post-deploy ok"]
    assert h.state()["live"] == "green" and h.state()["slots"]["green"]["status"] == "running"
    assert "local" not in h.world.lua_preview and ran.exists()
    assert h.history()[-1]["action"] == "promote" and h.history()[-1]["result"] == "ok"


def test_plain_switch_promotes_a_ready_slot_too(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    deploy.switch(h.run("switch"))
    assert h.state()["live"] == "green" and front(h) == (200, "green")


def test_a_deploy_into_a_ready_slot_removes_its_preview_before_stopping_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_PREVIEW", TOKEN)
    h = harness(tmp_path, preview={"token_env": "BG_PREVIEW"})
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    h.deploy("v3")  # into green, which v2 held ready
    changes = h.changes()
    assert changes.index("remove the preview route") < next(
        i for i, c in enumerate(changes) if c.startswith("drain and stop slot green"))
    assert h.state()["live"] == "green" and h.state()["slots"]["green"]["version"] == "v3"


def test_preview_in_reload_mode_is_refused_before_anything_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_PREVIEW", TOKEN)
    h = harness(tmp_path, mode="reload", preview={"token_env": "BG_PREVIEW"})
    h.deploy("v1")
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    assert "a preview route (preview.token_env is set) needs a router that can route by " \
        "request" in err.value.what and "local (reload mode)" in err.value.what
    assert not any(c.startswith("upload") for c in h.changes())


def test_a_missing_preview_token_names_the_variable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BG_PREVIEW", raising=False)
    h = harness(tmp_path, preview={"token_env": "BG_PREVIEW"})
    h.deploy("v1")
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    assert "preview.token_env names BG_PREVIEW, which is not set" in err.value.what
    assert "openssl rand" in err.value.hint


def test_no_switch_without_a_preview_token_just_waits(tmp_path: Path) -> None:
    h = harness(tmp_path, mode="reload")
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    assert "no preview route" in h.out.getvalue()
    assert h.state()["slots"]["green"]["status"] == "ready" and h.front_slot() == "blue"


def test_promote_with_nothing_ready_says_what_to_do(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    with pytest.raises(BluegreenError) as err:
        deploy.promote(h.run("promote"))
    assert "nothing to promote" in err.value.what and "--no-switch" in err.value.hint


# ---------------------------------------------------------------- canary by weight

def test_switch_weight_gives_the_idle_slot_a_sticky_share_and_abort_takes_it_back(
        tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    deploy.switch(h.run("switch"), weight=10)
    assert "set live port 8081 weight 10" in h.changes()
    assert not any("reload" in c for c in h.changes())  # a flip, not a reload
    assert h.state()["live"] == "blue" and h.state()["weight"] == 10
    assert render.parse_marker(h.world.files["local"][TARGET].decode()).weight == 10
    assert front(h, cohort_cookie(h, 10, canary=True))[1] == "green"
    assert front(h, cohort_cookie(h, 10, canary=False))[1] == "blue"
    st = status_of(h)
    assert st["weights"] == {"blue": 90, "green": 10} and st["consistent"]
    assert "CANARY: 10% of users on green" in views.format_status(st)
    assert h.history()[-1]["weight"] == 10
    deploy.switch(h.run("switch"), weight=25)
    assert front(h, cohort_cookie(h, 10, canary=True))[1] == "green"  # still on its side
    deploy.switch(h.run("switch"), abort=True)
    assert h.state()["weight"] == 0 and h.world.lua_weight["local"] == 0
    assert front(h, cohort_cookie(h, 25, canary=True))[1] == "blue"
    assert ("local", 8082) in h.world.running  # the canary keeps running, idle
    deploy.switch(h.run("switch"), abort=True)
    assert "no canary is running: nothing to do" in h.out.getvalue()


def test_promote_finishes_a_canary(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    deploy.switch(h.run("switch"), weight=50)
    deploy.promote(h.run("promote"))
    assert h.state()["live"] == "green" and h.state()["weight"] == 0
    assert h.world.lua_weight["local"] == 0 and front(h)[1] == "green"
    assert render.parse_marker(h.world.files["local"][TARGET].decode()).weight == 0


def test_weights_in_reload_mode_are_refused_naming_the_host(tmp_path: Path) -> None:
    h = harness(tmp_path, mode="reload")
    h.deploy("v1")
    h.deploy("v2")
    before = dict(h.world.files["local"])
    with pytest.raises(BluegreenError) as err:
        deploy.switch(h.run("switch"), weight=10)
    assert "a canary needs a router that can route by request on every traffic host (nginx " \
           "with its lua module, or haproxy), and local (reload mode) cannot" in err.value.what
    assert h.world.files["local"][TARGET] == before[TARGET] and h.state()["weight"] == 0


def test_bad_weights_and_steps_are_clear_errors(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    with pytest.raises(BluegreenError, match="--weight: must be a percent from 0 to 100, "
                                             "not 120") as err:
        deploy.switch(h.run("switch"), weight=120)
    assert err.value.exit_code == 2  # a bad argument, like a bad config value
    for steps in ("5,5,100", "0,50", "ten", "50,25"):
        with pytest.raises(BluegreenError, match="--canary: must be rising percents 1-100"):
            deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", canary=steps)
    with pytest.raises(BluegreenError, match="--canary: does not go with --no-switch"):
        deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", canary="5,100",
                      no_switch=True)
    with pytest.raises(BluegreenError, match="--to: does not go with --weight"):
        deploy.switch(h.run("switch"), "green", weight=5)
    assert h.state()["live"] == "blue" and not any(e["result"] == "failed"
                                                   for e in h.history())


def test_a_canary_walk_gates_each_step_and_ends_live(tmp_path: Path) -> None:
    h = harness(tmp_path, watch={"seconds": 0.3, "interval": 0.05, "min_requests": 3})
    h.deploy("v1")
    run = h.run("deploy")
    deploy.deploy(run, artifact(tmp_path, "v2"), "v2", canary="5,25,100", step=0.2)
    phases = h.phases()
    assert phases[phases.index("health ok"):] == [
        "health ok", "weight ok", "verify ok", "watch ok", "weight ok", "verify ok",
        "watch ok", "switch ok", "verify ok", "watch ok"]
    assert [c for c in h.changes() if c.startswith("set live port")] == [
        "set live port 8081 weight 5", "set live port 8081 weight 25", "set live port 8082"]
    assert h.state()["live"] == "green" and h.state()["weight"] == 0
    last = h.history()[-1]
    assert last["result"] == "ok" and last["weight"] == 0 and last["canary"] == [5, 25, 100]
    assert "(canary 5,25,100)" in views.format_history(h.history()).splitlines()[-1]


def test_a_canary_that_fails_its_gate_goes_back_to_zero_and_is_marked_bad(
        tmp_path: Path) -> None:
    h = harness(tmp_path, watch={"seconds": 0.3, "interval": 0.05, "min_requests": 3})
    ran = h.hook("on-failure")
    h.deploy("v1")
    h.world.broken.add(release_of(h, "v2"))  # /health says 200, every page says 500
    with pytest.raises(BluegreenError) as err:
        deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", canary="5,25,100",
                      step=2.0)
    assert err.value.phase == "watch" and err.value.what.startswith("auto-reverted: 5xx")
    assert h.phases()[-3:] == ["watch FAILED", "revert ok", "on-failure ok"]
    assert "set live port 8081 weight 25" not in h.changes()  # never reached step two
    assert "reverted to 0% in" in h.out.getvalue()
    st = h.state()
    assert st["live"] == "blue" and st["weight"] == 0 and h.world.lua_weight["local"] == 0
    assert st["slots"]["green"]["status"] == "bad" and st["bad_releases"]
    assert front(h, cohort_cookie(h, 5, canary=True))[1] == "blue"
    last = h.history()[-1]
    assert last["auto_reverted"] is True and last["weight"] == 0 and ran.exists()
    with pytest.raises(BluegreenError, match="auto-reverted before"):
        h.deploy("v2")
    # the hint: "fix the build and `fab deploy` again" - a fixed build goes live
    assert "fix the build and `fab deploy` again" in err.value.hint
    h.deploy("v3")
    assert h.state()["live"] == "green" and front(h)[1] == "green"


def test_a_canary_before_any_deploy_says_deploy_first_and_that_converges(
        tmp_path: Path) -> None:
    h = harness(tmp_path)
    with pytest.raises(BluegreenError) as err:
        deploy.switch(h.run("switch"), weight=10)
    assert "nothing is live yet" in err.value.what and "run `fab deploy` first" in err.value.hint
    assert not any("weight" in c or "reload" in c for c in h.changes())  # nothing routed
    h.deploy("v1")  # what the hint says
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    deploy.switch(h.run("switch"), weight=10)  # and now the canary asked for works
    assert h.state()["live"] == "blue" and h.state()["weight"] == 10


def test_deploy_and_rollback_are_refused_while_a_canary_runs(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))  # v1 live on blue, v2 warm on green
    deploy.switch(h.run("switch"), weight=10)
    for attempt in (lambda: h.deploy("v3"), lambda: deploy.rollback(h.run("rollback"))):
        with pytest.raises(BluegreenError) as err:
            attempt()
        assert "a canary is running: 10% of users are on green" in err.value.what
        assert "--abort" in err.value.hint
    assert h.state()["weight"] == 10 and ("local", 8082) in h.world.running


def test_a_weight_change_killed_half_way_is_put_back_by_the_next_command(
        tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))
    deploy.switch(h.run("switch"), weight=5)
    h.world.kill_after = "set live port 8081 weight 25"
    from bluegreen.testing import Killed
    with pytest.raises(Killed):
        deploy.switch(h.run("switch"), weight=25)
    h.world.kill_after, h.world.dead = "", False
    for path in ("/srv/demo/lock/owner.json", "/srv/demo/lock",
                 "/etc/nginx/conf.d/.bluegreen-traffic.lock/owner.json",
                 "/etc/nginx/conf.d/.bluegreen-traffic.lock"):
        h.world.files["local"].pop(path, None)
    assert h.world.lua_weight["local"] == 25 and h.state()["weight"] == 5
    assert status_of(h)["consistent"] is False
    deploy.switch(h.run("switch"), weight=5)  # any command recovers first
    assert "recovered interrupted canary" in h.out.getvalue()
    assert h.world.lua_weight["local"] == 5 and h.state()["weight"] == 5
    assert render.parse_marker(h.world.files["local"][TARGET].decode()).weight == 5
    assert [e for e in h.history() if e["action"] == "recover"]


def test_a_share_nginx_lost_is_an_inconsistency_with_the_way_out(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))
    deploy.switch(h.run("switch"), weight=10)
    h.world.lua_weight["local"] = 0  # say, someone POSTed to the control listener
    with pytest.raises(BluegreenError) as err:
        deploy.promote(h.run("promote"))
    assert "state says the canary gets 10% of users but nginx on local gives it 0%" in \
        err.value.what and "--weight 10" in err.value.hint
    assert h.state()["live"] == "blue"
    deploy.switch(h.run("switch"), weight=10)  # the way out it names: sets it again
    assert h.world.lua_weight["local"] == 10 and status_of(h)["consistent"]


# ---------------------------------------------------------------- maintenance

def test_lua_maintenance_answers_503_without_touching_the_slots(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    running = dict(h.world.running)
    deploy.maintenance(h.run("maintenance"), True, "Back at 14:00 (schema change)", 120)
    status, _ = front(h)
    assert status == 503 and h.world.lua_maintenance["local"] == "Back at 14:00 (schema change)"
    assert h.world.running == running
    assert not any(c.startswith(("drain", "start", "write " + TARGET)) for c in h.changes())
    st = status_of(h)
    assert st["maintenance"] == {"message": "Back at 14:00 (schema change)", "retry_after": 120}
    assert st["consistent"] and "MAINTENANCE: the front door answers 503" in \
        views.format_status(st)
    assert h.history()[-1]["maintenance"] == "on"
    deploy.maintenance(h.run("maintenance"), False)
    assert front(h) == (200, "green") and h.state()["maintenance"] == ""
    assert h.history()[-1]["maintenance"] == "off"


def test_reload_maintenance_writes_a_snippet_and_reloads(tmp_path: Path) -> None:
    h = harness(tmp_path, mode="reload")
    h.deploy("v1")
    deploy.maintenance(h.run("maintenance"), True, 'say "hi" \\ bye', 30)
    snippet = h.world.files["local"]["/etc/nginx/conf.d/demo.maintenance"].decode()
    assert 'return 503 "say \\"hi\\" \\\\ bye\\n";' in snippet
    assert "add_header Retry-After 30 always;" in snippet
    assert any("reload nginx" in c for c in h.changes())
    assert front(h)[0] == 503
    assert 'include "/etc/nginx/conf.d/demo.maintenanc[e]";' in \
        h.world.files["local"][TARGET].decode()
    deploy.maintenance(h.run("maintenance"), False)
    assert "/etc/nginx/conf.d/demo.maintenance" not in h.world.files["local"]
    assert front(h) == (200, "blue")


def test_reload_maintenance_refuses_a_dollar_and_a_rejected_config_is_put_back(
        tmp_path: Path) -> None:
    h = harness(tmp_path, mode="reload")
    h.deploy("v1")
    with pytest.raises(BluegreenError) as err:
        deploy.maintenance(h.run("maintenance"), True, "costs $5")
    assert "contains '$'" in err.value.what and "/etc/nginx/conf.d/demo.maintenance" \
        not in h.world.files["local"]
    h.world.nginx_rejects = True
    with pytest.raises(BluegreenError, match="nginx -t rejected the maintenance page"):
        deploy.maintenance(h.run("maintenance"), True, "back soon")
    assert "/etc/nginx/conf.d/demo.maintenance" not in h.world.files["local"]
    assert h.state()["maintenance"] == ""


def test_a_maintenance_message_is_one_short_line(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    with pytest.raises(BluegreenError, match="newline"):
        deploy.maintenance(h.run("maintenance"), True, "two\nlines")
    with pytest.raises(BluegreenError, match="at most 500"):
        deploy.maintenance(h.run("maintenance"), True, "x" * 501)
    with pytest.raises(BluegreenError, match="--retry-after: must be seconds from 0 to 86400"):
        deploy.maintenance(h.run("maintenance"), True, "soon", -1)
    with pytest.raises(BluegreenError, match="--step: must be seconds"):
        deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", canary="5,100",
                      step=-5)
    assert "local" not in h.world.lua_maintenance and h.state()["live"] == "blue"


def test_maintenance_on_again_without_a_message_keeps_the_recorded_one(tmp_path: Path) -> None:
    """What status prints after an nginx restart lost the page (`fab maintenance on`
    again) puts back the page state records, not the default one."""
    h = harness(tmp_path)
    h.deploy("v1")
    deploy.maintenance(h.run("maintenance"), True, "back at 14:00")
    del h.world.lua_maintenance["local"]  # nginx restarted: its shared dict is empty
    deploy.maintenance(h.run("maintenance"), True)
    assert h.state()["maintenance"] == "back at 14:00"
    assert "back at 14:00" in str(h.world.lua_maintenance["local"])
    deploy.maintenance(h.run("maintenance"), False)
    deploy.maintenance(h.run("maintenance"), True)  # off in between: the default again
    assert h.state()["maintenance"] == deploy.DEFAULT_MAINTENANCE


# ---------------------------------------------------------------- the pieces

def status_of(h: Harness) -> dict:
    run = h.run("status")
    return views.status(h.cfg, run.fleet)


def test_the_weight_is_in_the_marker_but_not_in_the_shape(tmp_path: Path) -> None:
    cfg = harness(tmp_path).cfg
    plain = render.parse_marker(render.render(cfg, "blue", "r", "v", generation=1))
    canary = render.parse_marker(render.render(cfg, "blue", "r", "v", generation=2, weight=25))
    assert plain and canary and plain.weight == 0 and canary.weight == 25
    assert plain.shape == canary.shape  # a new share is a flip, never a reload


def test_cohorts_for_probes_land_where_lua_puts_them() -> None:
    import zlib
    for weight in (1, 5, 50, 99):
        inside, outside = cohort_in(weight, canary=True), cohort_in(weight, canary=False)
        assert zlib.crc32(inside.encode()) % 100 < weight <= zlib.crc32(outside.encode()) % 100


def test_counters_from_the_control_listener_and_a_p99_from_the_histogram() -> None:
    raw = {"requests": 1000, "responses": {"2xx": 990, "5xx": 4}, "upstream_errors": 6,
           "latency_le_ms": [1, 2, 5, 10], "latency": [100, 400, 480, 10, 10]}
    c = parse_counters(raw)
    assert c.requests == 1000 and c.failed == 10 and c.latency_slower == 10
    assert c.latency_ms == ((1.0, 100), (2.0, 400), (5.0, 480), (10.0, 10))
    assert c.p99_ms == 10.0  # rank 990 falls at the end of the 5-10 ms bucket
    assert quantile([(10.0, 100)], 0, 0.5) == 5.0  # interpolated inside the bucket
    assert quantile([], 0, 0.99) is None
    assert bucket_delta(((1.0, 5), (2.0, 7)), ((1.0, 9), (2.0, 7))) == ((1.0, 4), (2.0, 0))


def test_the_watch_judges_p99_from_the_routers_histogram_with_its_probes() -> None:
    t = Tally(latencies_ms=[3.0])
    before = SlotCounters(requests=0)
    now = SlotCounters(requests=199, latency_ms=((5.0, 99), (1000.0, 100)))
    t.add_latency(before, now)
    assert t.buckets == {5.0: 99, 1000.0: 100}
    assert t.p99_ms is not None and 900 < t.p99_ms <= 1000  # users' tail, not the probe's
    assert Tally(latencies_ms=[1.0, 2.0]).p99_ms == 2.0  # no histogram: the probes alone
    assert not math.isnan(t.p99_ms)


def test_dry_runs_plan_a_canary_and_maintenance_and_change_nothing(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    h.deploy("v2")
    deploy.rollback(h.run("rollback"))
    files = {k: dict(v) for k, v in h.world.files.items()}
    run = h.run("switch", dry_run=True)
    deploy.switch(run, weight=10)
    plan = "\n".join(run.fleet.plan.lines())  # type: ignore[union-attr]
    assert "/bluegreen/live?port=8081&weight=10" in plan
    assert "[all] verify: /health through every front door, on both sides" in plan
    run = h.run("maintenance", dry_run=True)
    deploy.maintenance(run, True, "back soon")
    plan = "\n".join(run.fleet.plan.lines())  # type: ignore[union-attr]
    assert "/bluegreen/maintenance?on=1&retry=60&message=back%20soon" in plan
    assert h.world.files == files and h.world.log == []
    assert h.world.lua_weight["local"] == 0 and "local" not in h.world.lua_maintenance


def test_a_walk_that_ends_below_100_leaves_the_canary_for_promote(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    ran = h.hook("post-deploy")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", canary="5,25", step=0.1)
    assert "demo v2 is a canary: 25% of users on green" in h.out.getvalue()
    assert h.state()["live"] == "blue" and h.state()["weight"] == 25 and not ran.exists()
    last = h.history()[-1]
    assert last["weight"] == 25 and "(canary 5,25, left at 25%)" in \
        views.format_history(h.history()).splitlines()[-1]
    deploy.promote(h.run("promote"))
    assert h.state()["live"] == "green" and h.state()["weight"] == 0 and ran.exists()


def test_a_ready_slot_stays_ready_through_a_canary_and_its_abort(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.deploy("v1")
    deploy.deploy(h.run("deploy"), artifact(tmp_path, "v2"), "v2", no_switch=True)
    deploy.switch(h.run("switch"), weight=20)
    deploy.switch(h.run("switch"), abort=True)
    assert h.state()["slots"]["green"]["status"] == "ready"
    deploy.promote(h.run("promote"))
    assert h.state()["live"] == "green"
