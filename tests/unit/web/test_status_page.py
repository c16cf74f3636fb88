"""The status page rendered from recorded state and history: every view, what it shows,
and what it must never show. The `local` host reads the fixture files for real, through the
same views.status() that `fab status --json` prints; the fleet test renders a recorded
`fab status --json` of three hosts instead."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bluegreen.automation.jobqueue import JobRequest
from bluegreen.automation.rules import Rule
from bluegreen.automation.web.app import duration
from bluegreen.automation.web.catalog import AppEntry, build_catalog, repo_web_base
from bluegreen.automation.web.chart import durations_svg, nice_ceiling
from bluegreen.automation.web.model import app_view, history_row, jobs_view, slot_role
from bluegreen.automation.web.reader import AppReader, HistoryLog
from bluegreen.config import from_dict
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.hosts import LocalHost
from tests.unit.web.conftest import (
    APP_SECRET,
    FIXTURES,
    JENKINS_TOKEN,
    WEBHOOK_SECRET,
    World,
    fixture_history,
)

T = 1790000000.0
SECRETS = (APP_SECRET, WEBHOOK_SECRET, JENKINS_TOKEN,
           "f00dfeedf00dfeedf00dfeedf00dfeed",  # a broken lock's token, in history
           "0123456789abcdef0123456789abcdef")  # the held lock's token
UNSAFE_HTML = ("<script>", "javascript:")  # a version and a build URL in history carry them


def no_secrets(text: str, *, html: bool = True) -> None:
    for secret in SECRETS + (UNSAFE_HTML if html else ()):
        assert secret not in text, secret


def history_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="(?:ok|bad)" data-at="[^"]*" data-action="([^"]*)"', html)


def add_jobs(world: World) -> None:
    """One finished job whose log echoed the webhook secret, one running, one queued."""
    q = world.queue

    def request(sha: str, who: str) -> JobRequest:
        return JobRequest(lane="demo/production", app="demo", environment="production",
                          rule="demo-main", action="build", provider="github", event={},
                          repo="acme/demo", branch="main", sha=sha, who=who)

    q.submit("github", "d1", [request("a" * 40, "github:alice")], now=T)
    job = q.claim_next("demo/production", now=T + 1)
    assert job is not None
    q.finish(job.id, "failed", "deploy failed (exit 1)", exit_code=1, now=T + 30,
             log_tail=f"building\nsecret={WEBHOOK_SECRET}\nFAILED [phase=health]: boom\n"
                      f"env DB_PASSWORD={APP_SECRET}\n")
    q.submit("github", "d2", [request("b" * 40, "github:bob")], now=T + 40)
    running = q.claim_next("demo/production", now=T + 41)
    assert running is not None
    log = world.root / "job.log"
    log.write_text("fetching b\nbuilding b\n--> upload   demo.tar.gz to 1 host(s)\n")
    q.note(running.id, log_path=str(log))
    q.submit("github", "d3", [request("c" * 40, "github:carol")], now=T + 50)


# ---------------------------------------------------------------- every view renders


def test_overview_shows_live_slot_grid_lock_phase_history_chart_and_jobs(world: World) -> None:
    world.record(lock=True)
    add_jobs(world)
    html = world.html("/ui/")
    no_secrets(html)
    # the live slot, as recorded in state.json, readable without JavaScript
    assert 'data-live-slot="blue"' in html
    # hosts x slots: `local` with both slots; nothing runs here, so live is "not serving"
    assert re.search(r'class="cell live down" data-slot="blue" data-role="live"', html)
    assert re.search(r'data-slot="green" data-role="idle"', html)
    green = re.search(r'data-slot="green" data-role="idle">(.*?)</td>', html, re.S)
    assert green is not None  # the slot's version and release, as state.json records them
    assert '<span class="version">v2</span>' in green.group(1)
    assert "v2-1b2c3d4e5f60" in green.group(1)
    # the lock's holder, its action and the phase its owner record carries
    operation = re.search(r'data-testid="operation">(.*?)</div>', html, re.S)
    assert operation is not None
    text = re.sub(r"<[^>]+>", "", operation.group(1))
    assert "deploy in progress by jenkins:demo#45" in " ".join(text.split())
    assert "phase health" in " ".join(text.split())
    assert "ci-agent-3 pid 31337" in text
    # the overview shows the 5 newest entries (the unparseable line counts as one), newest first
    assert history_rows(html) == ["deploy", "?", "deploy", "unlock", "deploy"]
    assert html.count('<svg class="chart"') == 1
    # jobs: running (with its live log), queued, finished (with its log tail, secret scrubbed)
    assert "upload   demo.tar.gz to 1 host(s)" in html
    assert 'class="state pending">pending' in html
    assert "secret=[redacted]" in html and "DB_PASSWORD=[redacted]" in html


def test_app_page_has_traffic_hosts_full_timeline_phases_links(world: World) -> None:
    world.record()
    html = world.html("/ui/app/demo")
    no_secrets(html)
    assert "Traffic hosts" in html and "no bluegreen config installed" in html
    assert history_rows(html) == ["deploy", "?", "deploy", "unlock", "deploy", "rollback",
                                  "switch", "deploy", "deploy"]
    # the failed deploy: phase, host and the first line of its error only
    assert "[health on app2] slot blue did not become healthy within 10s: GET /health " \
           "answered 500" in html
    assert "Traceback" not in html
    # build and commit links (the commit link from the rule's clone_url, on GitHub)
    assert 'href="https://ci.example.com/job/demo/42/"' in html
    assert 'href="https://github.com/acme/demo/commit/3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"' \
        in html
    # the entry with a javascript: build URL and a non-SHA commit gets no link at all
    assert "not-a-sha; rm -rf /" in html and "/commit/not-a-sha" not in html
    assert "v5&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # measured failed requests, and the auto-revert
    assert "37 <small" in html and "of 310" in html
    assert "auto-reverted" in html
    assert "39 failed requests over 3 measured switches" in html
    # the chart has one bar per deploy/switch/rollback with a duration, and the strip
    assert html.count('<rect class="bar ') == 7
    assert "failed requests during the switch" in html


def test_phases_in_the_order_the_flow_ran_them(world: World) -> None:
    first = fixture_history()[0]
    row = history_row(first)
    names = [p["name"] for p in row["phases"]]
    assert names == ["inspect", "lock", "recover", "state", "announce", "upload", "stop",
                     "start", "health", "switch", "verify", "record"]
    assert sum(p["share"] for p in row["phases"]) == pytest.approx(1.0, abs=1e-3)
    switch = history_row(fixture_history()[2])
    assert [p["name"] for p in switch["phases"]][:3] == ["arguments", "lock", "recover"]


def test_api_state_is_the_same_model_plus_the_regions_to_swap(world: World) -> None:
    world.record(lock=True)
    add_jobs(world)
    data = world.json("view=app&app=demo")
    no_secrets(json.dumps(data), html=False)  # JSON carries the version as data, unescaped
    for fragment in data["fragments"].values():
        no_secrets(fragment)
    (app,) = data["apps"]
    assert app["live"] == "blue" and app["previous"] == "green"
    assert app["lock"]["phase"] == "health" and app["lock"]["who"] == "jenkins:demo#45"
    assert "token" not in app["lock"]
    assert [h["action"] for h in app["history"]][:3] == ["deploy", "?", "deploy"]
    newest = app["history"][0]
    assert newest["build_url"] == "" and newest["commit_url"] == ""
    assert {c["slot"]: c["role"] for c in app["grid"][0]["cells"]} == {"blue": "live",
                                                                        "green": "idle"}
    assert set(data["fragments"]) == {"app-demo", "jobs"}
    assert data["fragments"]["app-demo"].startswith('<section class="app" id="app-demo"')
    assert data["fragments"]["jobs"].startswith('<section class="jobs" id="jobs"')
    assert [j["id"] for j in data["jobs"]["running"]] == [2]
    assert [j["id"] for j in data["jobs"]["queued"]] == [3]
    assert data["jobs"]["finished"][0]["log_tail"].splitlines()[1] == "secret=[redacted]"
    overview = world.json("view=overview")
    assert [a["slug"] for a in overview["apps"]] == ["demo"]
    assert len(overview["apps"][0]["history"]) == 5


def test_the_page_follows_new_history_and_state_after_a_refresh(world: World) -> None:
    world.record()
    assert history_rows(world.html("/ui/"))[0] == "deploy"
    state = json.loads((world.app_root / "state.json").read_text())
    state["live"] = "green"
    (world.app_root / "state.json").write_text(json.dumps(state))
    world.append_history({"at": T + 9000, "who": "erin", "action": "switch", "result": "ok",
                          "from_slot": "blue", "to_slot": "green", "seconds": 0.3})
    world.refresh()
    html = world.html("/ui/")
    assert 'data-live-slot="green"' in html
    assert history_rows(html)[0] == "switch"


def test_every_page_without_an_app_config_still_renders(tmp_path: Path) -> None:
    """The rule names a config that does not exist (yet): the page says so, it does not
    fail; and the data model says the same."""
    from tests.unit.web.conftest import make_world

    world = make_world(tmp_path)
    world.config.unlink()
    html = world.html("/ui/")
    assert "could not read the state" in html and "bluegreen.toml" in html
    assert world.json()["apps"][0]["error"]


def test_a_failed_read_keeps_the_last_good_state_with_its_time(world: World) -> None:
    world.record()
    calls = {"n": 0}

    def flaky(cfg: Any, fleet: Any) -> dict[str, Any]:
        from bluegreen import views

        calls["n"] += 1
        if calls["n"] > 1:
            raise BluegreenError("cannot connect to app1:22: timed out", host="app1",
                                 hint="is the host up?")
        return views.status(cfg, fleet, history=0)

    world.status_fn = flaky
    assert 'data-live-slot="blue"' in world.html("/ui/")
    world.refresh()
    html = world.html("/ui/")
    assert "could not read the state (showing what was read" in html
    assert "cannot connect to app1:22: timed out (is the host up?)" in html
    assert 'data-live-slot="blue"' in html  # the last good read, still shown


def test_a_bug_while_reading_is_one_line_not_a_traceback(world: World) -> None:
    world.record()

    def broken(cfg: Any, fleet: Any) -> dict[str, Any]:
        raise KeyError("slots")

    world.status_fn = broken
    html = world.html("/ui/")
    assert "internal error while reading (see the service log)" in html
    assert "KeyError" not in html and "Traceback" not in html


def test_unknown_app_and_unknown_path_are_404_pages(world: World) -> None:
    world.record()
    status, _, body = world.call("/ui/app/nope")
    assert status == 404 and b"no such app" in body
    status, _, body = world.call("/ui/api/state", query="view=app&app=nope")
    assert status == 404 and json.loads(body)["error"]
    status, _, _ = world.call("/ui/whatever")
    assert status == 404
    status, headers, _ = world.call("/ui")
    assert status == 308 and headers["Location"] == "/ui/"
    status, _, _ = world.call("/ui/", method="POST")
    assert status == 405


def test_static_files_and_security_headers(world: World) -> None:
    world.record()
    status, headers, body = world.call("/ui/static/ui.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"data-live" in body  # the URL it polls comes from the page, not the script
    status, headers, _ = world.call("/ui/static/ui.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert world.call("/ui/static/../app.py")[0] == 404
    _, headers, body = world.call("/ui/")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["Cache-Control"] == "no-store"
    # nothing loaded from elsewhere: every script and stylesheet is this service's own
    html = body.decode()
    loaded = re.findall(r'<script[^>]* src="([^"]+)"', html) + \
        re.findall(r'<link[^>]* href="([^"]+)"', html)
    assert sorted(loaded) == ["/ui/static/ui.css", "/ui/static/ui.js"]
    # links out are only build and commit pages (https), never a script URL
    for url in re.findall(r'<a href="([^"]+)"', html):
        assert url.startswith(("/", "#", "https://")), url
    assert "<script>" not in html  # no inline script: the CSP would refuse it anyway


# ---------------------------------------------------------------- a fleet, recorded


def test_fleet_status_unknown_hosts_failed_slots_weights_pending_switch(world: World) -> None:
    world.record()
    recorded = json.loads((FIXTURES / "status-fleet.json").read_text())
    world.status_fn = lambda cfg, fleet: recorded
    html = world.html("/ui/app/demo")
    no_secrets(html)
    assert "feedfacefeedface" not in html  # the lock token of the recorded status
    assert 'data-live-slot="green"' in html
    assert "unknown: cannot connect to app3:22: timed out" in html
    assert "unknown: cannot connect to lb3:22: connection refused" in html
    # app1: blue warm and healthy (ready to switch back), green live
    # app2: green live but unhealthy, blue stopped
    cells = re.findall(r'class="cell ([a-z ]+)" data-slot="(\w+)" data-role="(\w+)"', html)
    assert cells == [("ready", "blue", "ready"), ("live", "green", "live"),
                     ("idle", "blue", "idle"), ("live down", "green", "live")]
    assert "weight 10.0%" in html and "weight 90.0%" in html
    assert "GET /health -&gt; 503 after 2.0s" in html
    assert "interrupted switch pending: switch 9f8e7d6c5b4a" in html
    assert 'class="verdict inconsistent"' in html
    assert "switch</b> in progress by <b>jenkins:shop#7" in html


def test_slot_roles() -> None:
    live, ready, failed = ({"running": True, "healthy": True},) * 2 + (
        {"running": True, "healthy": False},)
    assert slot_role("blue", "blue", {"release": "r"}, live) == "live"
    assert slot_role("green", "blue", {"release": "r"}, ready) == "ready"
    assert slot_role("green", "blue", {"release": "r"}, failed) == "failed"
    assert slot_role("green", "blue", {"release": "r", "status": "failed"}, None) == "failed"
    assert slot_role("green", "blue", {"release": "r"}, {"running": False}) == "idle"
    assert slot_role("green", "blue", {"release": ""}, {"running": False}) == "empty"
    assert slot_role("green", "blue", {"release": "r", "status": "ready"}, None) == "ready"


# ---------------------------------------------------------------- pieces


def test_catalog_groups_rules_by_config_and_derives_commit_links() -> None:
    def rule(name: str, app: str, env: str, config: str, clone: str = "") -> Rule:
        return Rule(name=name, app=app, environment=env, action="build",
                    branch=re.compile("main"), repo="a/b", config=config, clone_url=clone)

    entries = build_catalog([
        rule("a", "shop", "production", "/etc/shop.toml", "git@github.com:acme/shop.git"),
        rule("b", "shop", "staging", "/etc/shop.toml"),
        rule("c", "shop", "staging", "/etc/shop-staging.toml"),
        rule("d", "web", "production", ""),
    ])
    assert [(e.slug, e.config_path, e.lanes) for e in entries] == [
        ("shop", "/etc/shop.toml", ("shop/production", "shop/staging")),
        ("shop-staging", "/etc/shop-staging.toml", ("shop/staging",))]
    assert entries[0].commit_base == "https://github.com/acme/shop"
    assert repo_web_base("https://gitlab.example.com/group/sub/proj.git") == \
        "https://gitlab.example.com/group/sub/proj"
    assert repo_web_base("ssh://git@gitea.example.com:2222/o/r.git") == \
        "https://gitea.example.com/o/r"
    assert repo_web_base("/srv/git/demo.git") == ""
    assert repo_web_base("file:///srv/demo.git") == ""


def test_history_log_reads_whole_then_only_appends_and_survives_truncation(
        tmp_path: Path) -> None:
    cfg = from_dict({"app": "demo", "start": "x {port}"})
    host = LocalHost(cfg.hosts.app[0], cfg)
    path = tmp_path / "history.jsonl"
    path.write_text('{"action": "deploy", "result": "ok", "seconds": 1}\n'
                    '{"action": "switch", "result": "ok", "seconds": 0.2}\n')
    log = HistoryLog(keep=3)
    log.update(host, str(path))
    assert log.offset == path.stat().st_size
    assert sum(log.totals.operations.values()) == 2
    with path.open("a") as fh:  # one whole line, one being written
        fh.write('{"action": "rollback", "result": "failed"}\n{"action": "depl')
    log.update(host, str(path))
    assert log.totals.operations[("rollback", "failed")] == 1
    assert sum(log.totals.operations.values()) == 3  # the half line waits
    with path.open("a") as fh:
        fh.write('oy", "result": "ok", "seconds": 3}\n{"action": "x", "result": "ok"}\n')
    log.update(host, str(path))
    assert log.totals.operations[("deploy", "ok")] == 2
    assert [e["action"] for e in log.recent] == ["rollback", "deploy", "x"]  # keep=3
    path.write_text('{"action": "deploy", "result": "ok"}\n')  # replaced: count again
    log.update(host, str(path))
    assert dict(log.totals.operations) == {("deploy", "ok"): 1}


def test_chart_scales_and_draws_the_failed_request_strip_only_when_measured() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 3.2, 12.5, 24, 700)] == \
        [1.0, 0.5, 1, 5, 20, 25, 1000]
    plain = [{"action": "deploy", "result": "ok", "seconds": 3.0, "at": T},
             {"action": "switch", "result": "failed", "seconds": 0.5, "at": T + 60}]
    svg = str(durations_svg(plain, title="t"))
    assert svg.count('<rect class="bar ') == 2 and 'class="bar switch failed"' in svg
    assert "failed requests" not in svg
    measured = [{**plain[0], "failed_requests": 0}, {**plain[1], "failed_requests": 12}]
    svg = str(durations_svg(measured, title="t"))
    assert svg.count('class="lost"') == 1 and svg.count('class="zero"') == 1
    assert "no deploys" in str(durations_svg([], title="t"))


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [duration(x) for x in (0.412, 12.34, 125, 7322, None)] == \
        ["0.41 s", "12.3 s", "2 min 05 s", "2 h 02 min", "—"]


def test_reads_reuse_connections_until_a_failure_or_idleness(world: World) -> None:
    world.record()
    made: list[Fleet] = []
    closed: list[Fleet] = []

    class Counted(Fleet):
        def close(self) -> None:
            closed.append(self)
            super().close()

    def factory(cfg: Any) -> Fleet:
        made.append(Counted(cfg))
        return made[-1]

    fail = {"now": False}

    def status(cfg: Any, fleet: Any) -> dict[str, Any]:
        from bluegreen import views

        if fail["now"]:
            raise BluegreenError("cannot connect")
        return views.status(cfg, fleet, history=0)

    entry = AppEntry(slug="demo", name="demo", config_path=str(world.config),
                     lanes=("demo/production",), commit_base="")
    reader = AppReader(entry, ttl=3600, status_fn=status, fleet_factory=factory)
    try:
        reader.refresh()
        reader.refresh()
        assert len(made) == 1 and not closed  # one fleet, its connections reused
        fail["now"] = True
        assert reader.refresh().error == "cannot connect"
        assert closed == made  # a failed read drops its connections
        fail["now"] = False
        reader.refresh()
        assert len(made) == 2
        reader._close_if_idle()  # what the idle timer runs
        assert closed == made
    finally:
        reader.close()


def test_an_app_not_read_yet_renders_as_reading(world: World) -> None:
    """The first read of a slow host may outlast the page's wait: the page says so."""
    entry = next(iter(world.web.readers.values())).entry
    view = app_view(entry, None, jobs_view([], {}, log_lines=5, now=T), now=T)
    html = world.web.templates.get_template("_app.html").render(app=view, detail=True)
    assert "reading the state…" in html and 'data-live-slot=""' in html
