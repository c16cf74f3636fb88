"""The status page in a real browser while a real deploy runs.

Headless Chromium (Debian's chromium + chromedriver, through Selenium) opens the page of
the real `bluegreen serve`; a signed GitHub push makes the service build the demo app and
run the real `python -m bluegreen deploy` against a private nginx. Without any reload, the
page must show the deploy holding the lock, then the live slot moving from blue to green
and the new history row. Screenshots land in .run/screenshots/ (docs/status-page.png in the
README is one of them).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.nginx import PrivateNginx
from testkit.project import Project
from tests.integration.automation.conftest import (
    GitRemote,
    Harness,
    Service,
    git,
    github_payload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "examples" / "demo"
SCREENSHOTS = ROOT / ".run" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# As root, in a sandbox with no network: no sandbox, no GPU, and none of Chromium's own
# background connections (they would be refused, many at a time).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
HOLD_LOCK_SECONDS = 6  # the pre-deploy hook's sleep: longer than cache (2 s) + poll (2 s)
TIMEOUT = 60.0  # a build and deploy take a few seconds; two shared cores may be busy


def _need(path: str) -> None:
    if not Path(path).exists():
        raise AssertionError(f"{path} is missing: run scripts/install-system-deps.sh "
                             "(it installs Debian's chromium and chromium-driver)")


@dataclass
class Page:
    driver: Any
    url: str

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def live_slot(self) -> str:
        return str(self.js("var b = document.querySelector('[data-live-slot]');"
                           "return b ? b.getAttribute('data-live-slot') : null;"))

    def history(self) -> list[dict[str, str]]:
        return list(self.js(
            "return Array.from(document.querySelectorAll('[data-testid=history] tbody tr'))"
            ".map(function (tr) { return {action: tr.dataset.action, result: tr.dataset.result,"
            " text: tr.innerText}; });"))

    def operation(self) -> str:
        return str(self.js("var o = document.querySelector('[data-testid=operation]');"
                           "return o ? o.innerText : '';"))

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                self.shot("timeout")
                raise AssertionError(f"the page did not show {what} within {timeout:g}s; "
                                     f"live={self.live_slot()!r} history={self.history()!r}")
            time.sleep(0.2)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"status-page-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    _need(CHROMIUM)
    _need(CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,1500")
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER, log_output=str(
        tmp_path / "chromedriver.log")), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # chromedriver and the browser it started


@pytest.fixture
def deploying(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path]
              ) -> Iterator[tuple[Harness, Project]]:
    project = Project(tmp_path / "app", private_nginx, artifacts, 'app = ["local"]').write()
    hook = project.dir / "hooks" / "pre-deploy"
    hook.parent.mkdir()
    hook.write_text(f"#!/bin/sh\nsleep {HOLD_LOCK_SECONDS}\n")  # holds the lock, visibly
    hook.chmod(0o755)
    root = tmp_path / "automation"
    root.mkdir()
    harness = Harness(root, GitRemote.create(root))
    shutil.copytree(DEMO / "app", harness.remote.work / "app")
    shutil.copy2(DEMO / "build.py", harness.remote.work / "build.py")
    rule = harness.build_rule(build_command='python3 build.py "$BLUEGREEN_COMMIT" --out dist',
                              artifact="dist/demo-*.tar.gz",
                              config=str(project.dir / "bluegreen.toml"))
    del rule["deploy_command"]  # the default: the real `python -m bluegreen deploy`
    harness.write_config([rule])
    try:
        yield harness, project
    finally:
        harness.stop_all()  # the service first: no job may start a slot after this
        project.stop_everything()
        harness.http.close()


def push(harness: Harness, service: Service, message: str) -> str:
    work = harness.remote.work
    with (work / "CHANGES").open("a") as changes:
        changes.write(message + "\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    sha = harness.remote.push("main")
    reply = harness.post_github(service, github_payload("main", sha, pusher="alice-dev"))
    assert reply.status_code == 202, reply.text
    return sha


def test_the_page_shows_a_deploy_move_traffic_from_blue_to_green_without_a_reload(
        deploying: tuple[Harness, Project], browser: Any) -> None:
    harness, project = deploying
    project.deploy("v1", env={"BLUEGREEN_WHO": "alice@laptop"})  # by hand: blue is live
    assert project.front_version() == "v1"
    service = harness.start()

    page = Page(browser, f"{service.url}/ui/app/demo")
    browser.get(page.url)
    page.wait("the first read", lambda: page.live_slot() == "blue")
    assert [(h["action"], h["result"]) for h in page.history()] == [("deploy", "ok")]
    assert "v1" in page.history()[0]["text"]
    page.wait("live updates running", lambda: "live" in page.js(
        "return document.getElementById('live-status').textContent"))
    page.js("window.__sameDocument = 'still here';")  # a reload would clear it
    page.shot("before")

    sha = push(harness, service, "second release")

    # the deploy holds the lock (the pre-deploy hook sleeps): the page says who and what
    operation = page.wait("the deploy in progress", page.operation)
    assert "deploy in progress by github:alice-dev" in " ".join(operation.split())
    # open the running job's log: it must stay open while the page updates around it
    browser.find_element("css selector", "#jobs details[data-key='job-1'] summary").click()
    page.wait("the job's log tail", lambda: page.js(
        "var p = document.querySelector(\"#jobs details[data-key='job-1'] pre.log\");"
        "return p !== null && p.offsetParent !== null && p.innerText.length > 0"))
    page.shot("during")

    page.wait("the live slot move to green", lambda: page.live_slot() == "green")
    rows = page.wait("the new history row", lambda: (lambda h: h if len(h) == 2 else None)(
        page.history()))
    assert [(h["action"], h["result"]) for h in rows] == [("deploy", "ok"), ("deploy", "ok")]
    assert sha[:10] in rows[0]["text"] and "github:alice-dev" in rows[0]["text"]
    assert "blue → green" in rows[0]["text"]
    page.wait("the lock released", lambda: not page.operation())
    assert page.js("return window.__sameDocument") == "still here"  # never reloaded
    # what the page says is what nginx does
    assert project.front_version() == sha
    # the job that deployed it, with its log tail, finished
    page.wait("the job succeeded", lambda: page.js(
        "return document.querySelector('#jobs .job.succeeded') !== null"))
    log = page.js("var d = document.querySelector(\"#jobs details[data-key='job-1']\");"
                  "return d.open ? d.querySelector('pre.log').innerText : null;")
    assert log is not None and "deployed demo" in log, log  # still open, now the whole tail
    page.shot("after")
    docs_shot = page.shot("app")

    browser.set_window_size(390, 1400)  # a phone: the same page, one column
    browser.get(f"{service.url}/ui/")
    page.wait("the overview", lambda: page.live_slot() == "green")
    page.shot("phone")
    assert docs_shot.stat().st_size > 10_000
