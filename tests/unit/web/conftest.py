"""A recorded app on disk for the status page: bluegreen.toml for the `local` host, its
state.json, history.jsonl and (optionally) a held lock, copied from fixtures/, and an
automation.toml whose rule names that config. The page is called as a WSGI app."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.settings import Settings, load_settings, resolve_secrets
from bluegreen.automation.web import StatusWeb
from bluegreen.automation.web.reader import AppReader

FIXTURES = Path(__file__).parent / "fixtures"
APP_SECRET = "s3cr3t-db-password-value"  # in the app's [env]: must never be shown
WEBHOOK_SECRET = "gh-webhook-secret-value"
JENKINS_TOKEN = "jenkins-api-token-value"


def fixture_history() -> list[dict[str, Any]]:
    """The fixture's parseable entries, in file order."""
    out = []
    for line in (FIXTURES / "history.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@dataclass
class World:
    root: Path
    app_root: Path  # {paths.root}/demo on the `local` host
    config: Path
    settings: Settings
    queue: JobQueue
    environ: dict[str, str] = field(default_factory=dict)
    status_fn: Callable[..., dict[str, Any]] | None = None
    counters_fn: Callable[..., dict[str, Any]] | None = None
    _web: StatusWeb | None = None

    # ---- the recorded app

    def record(self, *, lock: bool = False) -> World:
        self.app_root.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / "state.json", self.app_root / "state.json")
        shutil.copy(FIXTURES / "history.jsonl", self.app_root / "history.jsonl")
        if lock:
            (self.app_root / "lock").mkdir(exist_ok=True)
            shutil.copy(FIXTURES / "owner.json", self.app_root / "lock" / "owner.json")
        return self

    def append_history(self, *entries: dict[str, Any]) -> None:
        with (self.app_root / "history.jsonl").open("a") as fh:
            for entry in entries:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")

    # ---- the page

    @property
    def web(self) -> StatusWeb:
        if self._web is None:
            self._web = self.make_web()
        return self._web

    def make_web(self) -> StatusWeb:
        def reader(entry: Any) -> AppReader:
            kw: dict[str, Any] = {}
            if self.status_fn is not None:
                kw["status_fn"] = self.status_fn
            if self.counters_fn is not None:
                kw["counters_fn"] = self.counters_fn
            # a long ttl: tests refresh on purpose, never by the clock
            return AppReader(entry, ttl=3600, **kw)

        secrets = resolve_secrets(self.settings, {"GH_SECRET": WEBHOOK_SECRET,
                                                  "JENKINS_TOKEN": JENKINS_TOKEN})
        return StatusWeb(self.settings, secrets, self.queue, environ=self.environ,
                         ttl=3600, reader_factory=reader)

    def refresh(self) -> None:
        for reader in self.web.readers.values():
            reader.refresh()

    def call(self, path: str, *, method: str = "GET", query: str = "",
             headers: dict[str, str] | None = None, remote: str = "127.0.0.1",
             body: bytes = b"", content_type: str = "") -> tuple[int, dict[str, str], bytes]:
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                                   "QUERY_STRING": query, "REMOTE_ADDR": remote,
                                   "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http"}
        if body:
            environ["CONTENT_LENGTH"] = str(len(body))
        if content_type:
            environ["CONTENT_TYPE"] = content_type
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        seen: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            seen["status"] = int(status.split()[0])
            seen["headers"] = response_headers

        chunks = self.web(environ, start_response)
        headers_out: dict[str, str] = {}
        for name, value in seen["headers"]:
            headers_out[name] = value if name not in headers_out else \
                headers_out[name] + "\n" + value
        return seen["status"], headers_out, b"".join(chunks)

    def html(self, path: str, **kw: Any) -> str:
        status, _, body = self.call(path, **kw)
        assert status == 200, body[:500]
        return body.decode()

    def json(self, query: str = "view=overview", **kw: Any) -> dict[str, Any]:
        status, headers, body = self.call("/ui/api/state", query=query, **kw)
        assert status == 200, body[:500]
        assert headers["Content-Type"] == "application/json"
        return json.loads(body)  # type: ignore[no-any-return]


AUTOMATION = """
[service]
state_dir = "{state}"
listen = "{listen}"
{token_line}
[secrets]
github = "GH_SECRET"
[[rules]]
name = "demo-main"
repo = "acme/demo"
branch = "main"
app = "demo"
environment = "production"
action = "build"
clone_url = "git@github.com:acme/demo.git"
build_command = "true"
artifact = "dist/demo.tar.gz"
config = "{config}"
[[rules]]
name = "demo-feature"
repo = "acme/demo"
branch = "feature/.+"
app = "demo"
environment = "production"
action = "jenkins"
jenkins_job = "demo/build"
"""


def make_world(root: Path, *, listen: str = "127.0.0.1", token_env: str = "",
               environ: dict[str, str] | None = None) -> World:
    config = root / "bluegreen.toml"
    config.write_text(f"""
app = "demo"
start = "{{release}}/bin/runner {{port}}"
[hosts]
app = ["local"]
[paths]
root = "{root / 'srv'}"
[nginx]
target = "{root / 'nginx' / 'demo.conf'}"
[env]
DB_PASSWORD = "{APP_SECRET}"
""")
    automation = root / "automation.toml"
    automation.write_text(AUTOMATION.format(
        state=root / "state", listen=listen, config=config,
        token_line=f'ui_token_env = "{token_env}"' if token_env else ""))
    # the jenkins rule needs a jenkins section; it has no config, so no app card of its own
    automation.write_text(automation.read_text() + '\n[jenkins]\nurl = "https://ci.example.com/"'
                          '\nuser = "bot"\napi_token_env = "JENKINS_TOKEN"\n')
    settings = load_settings(automation)
    return World(root=root, app_root=root / "srv" / "demo", config=config, settings=settings,
                 queue=JobQueue(settings.db_path), environ=dict(environ or {}))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)
