"""The status page and /metrics, as one WSGI app that `bluegreen serve` mounts.

  GET  /ui/                   every app: slots per host, lock and running operation, recent
                              history, chart; automation jobs with their log tails
  GET  /ui/app/<slug>         one app in full: traffic hosts, the whole timeline with phases
  GET  /ui/api/state?view=overview | ?view=app&app=<slug>
                              the same data as JSON, plus the page's regions rendered again
                              (what ui.js swaps in every two seconds)
  GET  /metrics               Prometheus text format
  GET|POST /ui/login, POST /ui/logout, GET /ui/static/<file>
Everything but the login form and the static files goes through auth.Guard first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from bluegreen.automation.jobqueue import FINISHED, PENDING, RUNNING, Job, JobQueue
from bluegreen.automation.settings import Secrets, Settings
from bluegreen.automation.web import metrics
from bluegreen.automation.web.auth import Access, Guard
from bluegreen.automation.web.catalog import AppEntry, build_catalog
from bluegreen.automation.web.chart import durations_svg, phasebar_svg
from bluegreen.automation.web.http import Request, Response, StartResponse, redirect, text
from bluegreen.automation.web.model import app_view, jobs_view, scrub
from bluegreen.automation.web.reader import AppReader, Snapshot

log = logging.getLogger("bluegreen.automation.web")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
CACHE_SECONDS = 2.0  # one read per app per this long, however many pages and scrapers ask
POLL_MS = 2000  # how often an open page asks for news
FIRST_READ_WAIT = 12.0  # the first read of an app may connect over SSH: wait for it once
METRICS_WAIT = 5.0  # a scrape waits this long for stale apps (then gets what is known)
HISTORY_ON_OVERVIEW = 5
HISTORY_ON_APP_PAGE = 50


def _time_tag(stamp: Any) -> Markup:
    if not isinstance(stamp, int | float) or isinstance(stamp, bool) or stamp <= 0:
        return Markup("—")
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
    return Markup(f'<time datetime="{iso}">{shown}</time>')  # noqa: S704 - digits only


def short(value: Any, limit: int = 24) -> Markup:
    """A version or release as a person scans it: a commit SHA (what webhook deploys use as
    the version) or a long name cut short, the whole value in the tooltip."""
    text = str(value or "")
    if re.fullmatch(r"[0-9a-f]{40}(-[0-9a-f]{12})?", text):
        return Markup('<span title="{}">{}</span>').format(text, text[:12])
    if len(text) > limit:
        return Markup('<span title="{}">{}…</span>').format(text, text[:limit - 1])
    return escape(text)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _next_path(value: str) -> str:
    """Where the login form may send the browser back to: this page's own paths only."""
    if value.startswith("/ui/") and not value.startswith("//") and "\\" not in value \
            and "\n" not in value and "\r" not in value:
        return value
    return "/ui/"


class StatusWeb:
    def __init__(self, settings: Settings, secrets: Secrets, queue: JobQueue, *,
                 environ: Mapping[str, str] | None = None, ttl: float = CACHE_SECONDS,
                 reader_factory: Callable[[AppEntry], AppReader] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        self.queue = queue
        self.ttl = ttl
        self.guard = Guard.from_settings(settings.service.listen, settings.service.ui_token_env,
                                         env)
        self._reader_factory = reader_factory or (lambda e: AppReader(e, ttl=ttl))
        self._readers: dict[str, AppReader] | None = None  # built at the first request
        self._readers_lock = threading.Lock()
        # the service's own secrets: scrubbed from job logs and messages should one appear
        values = [s.value for s in secrets.by_provider.values()]
        if secrets.jenkins_api_token is not None:
            values.append(secrets.jenkins_api_token.value)
        if self.guard.token is not None:
            values.append(self.guard.token)
        self.secret_values = tuple(v.decode("utf-8", "replace") for v in values if len(v) >= 4)
        self.templates = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                     undefined=StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
        self.templates.filters.update(
            time_tag=_time_tag, dur=duration, phasebar=phasebar_svg, short=short,
            chart=lambda app: durations_svg(app["chart"], title=f"{app['app']}: durations "
                                            "of deploys, switches and rollbacks"))
        self.static = {p.name: p.read_bytes() for p in STATIC.iterdir()
                       if p.suffix in STATIC_TYPES}
        self.collector = metrics.BluegreenCollector(self._metrics_snapshots, queue.counts)

    @staticmethod
    def handles(path: str) -> bool:
        return path in ("/ui", "/metrics") or path.startswith("/ui/")

    # ---- WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        request = Request.from_environ(environ)
        try:
            response = self.route(request)
        except Exception:  # a person gets one line, the log gets the traceback
            log.exception("status page: internal error on %s %s", request.method, request.path)
            response = text(500, "internal error (see the service log)\n")
        return response.send(start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        if path == "/ui":
            return redirect("/ui/", 308)
        if path.startswith("/ui/static/"):
            return self._static(path[len("/ui/static/"):])
        if path == "/ui/login":
            return self._login(request)
        if path == "/ui/logout":
            if request.method != "POST":
                return text(405, "use POST\n", headers=[("Allow", "POST")])
            return redirect("/ui/login", headers=[
                ("Set-Cookie", self.guard.clear_cookie(secure=request.secure))])
        if request.method not in ("GET", "HEAD"):
            return text(405, "use GET\n", headers=[("Allow", "GET, HEAD")])
        access = self.guard.check(request)
        if not access.allowed:
            return self._denied(request, access)
        if path == "/metrics":
            return Response(200, metrics.exposition(self.collector),
                            content_type=metrics.CONTENT_TYPE)
        if path == "/ui/":
            return self._page("overview", "", request, access)
        if path.startswith("/ui/app/"):
            return self._page("app", path[len("/ui/app/"):].rstrip("/"), request, access)
        if path == "/ui/api/state":
            return self._api(request)
        return self._message(404, "not found", f"there is no page {path[:100]!r}")

    # ---- pages

    def _page(self, view: str, slug: str, request: Request, access: Access) -> Response:
        data = self.state(view, slug)
        if data is None:
            return self._message(404, "no such app", f"no app {slug[:60]!r} here; the apps "
                                 "are the configs automation.toml's rules name")
        live_url = "/ui/api/state?view=overview" if view == "overview" else \
            f"/ui/api/state?view=app&app={slug}"
        context = {**self._chrome(slug, access), "live_url": live_url, **data}
        if view == "overview":
            html = self.templates.get_template("overview.html").render(
                source=self.settings.source, **context)
        else:
            html = self.templates.get_template("app.html").render(
                app=data["apps"][0], **context)
        return Response(200, html.encode())

    def _api(self, request: Request) -> Response:
        view = request.arg("view", "overview")
        slug = request.arg("app")
        if view not in ("overview", "app"):
            return self._json(400, {"error": "view is overview or app"})
        data = self.state(view, slug)
        if data is None:
            return self._json(404, {"error": f"no app {slug[:60]!r}"})
        detail = view == "app"
        fragments = {f"app-{app['slug']}": self.templates.get_template("_app.html").render(
            app=app, detail=detail) for app in data["apps"]}
        fragments["jobs"] = self.templates.get_template("_jobs.html").render(jobs=data["jobs"])
        return self._json(200, {**data, "fragments": fragments})

    def state(self, view: str, slug: str = "") -> dict[str, Any] | None:
        """The data model of a page (None: no such app)."""
        readers = self.readers
        if view == "app":
            if slug not in readers:
                return None
            chosen = [readers[slug]]
        else:
            chosen = list(readers.values())
        snaps = self._snapshots(chosen, FIRST_READ_WAIT, only_first=True)
        now = time.time()
        active = self.queue.list_jobs(states=[PENDING, RUNNING], limit=500)
        finished = self.queue.list_jobs(states=FINISHED, limit=200)
        lines = self.settings.service.log_tail_lines
        rows = HISTORY_ON_APP_PAGE if view == "app" else HISTORY_ON_OVERVIEW
        apps = []
        for reader in chosen:
            lanes = set(reader.entry.lanes)
            mine = [j for j in active + finished if j.lane in lanes]
            jobs = jobs_view(mine, _count(mine), log_lines=lines, now=now)
            apps.append(app_view(reader.entry, snaps.get(reader.entry.slug), jobs, now=now,
                                 history_rows=rows))
        if view == "app":
            lanes = set(chosen[0].entry.lanes)
            shown = [j for j in active + finished if j.lane in lanes]
            counts = _count(shown)
        else:
            shown, counts = active + finished, self.queue.counts()
        jobs = jobs_view(shown, counts, log_lines=lines, now=now)
        # every app's [env] values too: a job's log may belong to any app
        secrets = self.secret_values + tuple(s for r in readers.values() for s in r.secrets())
        return scrub({"generated_at": now, "apps": apps, "jobs": jobs}, secrets)

    # ---- reading

    @property
    def readers(self) -> dict[str, AppReader]:
        with self._readers_lock:
            if self._readers is None:
                self._readers = {e.slug: self._reader_factory(e)
                                 for e in build_catalog(self.settings.rules)}
            return self._readers

    @staticmethod
    def _snapshots(readers: list[AppReader], wait: float, *, only_first: bool
                   ) -> dict[str, Snapshot]:
        """Each reader's snapshot; every stale one starts refreshing at once (in parallel),
        then we wait up to `wait` for those we must: all stale ones, or (`only_first`) only
        apps never read yet, so a page is never held up by a slow host twice."""
        out: dict[str, Snapshot] = {}
        for reader in readers:
            snap = reader.snapshot(wait=0)
            if snap is not None:
                out[reader.entry.slug] = snap
        deadline = time.monotonic() + wait
        for reader in readers:
            known = out.get(reader.entry.slug)
            if known is not None and (only_first or time.time() - known.read_at < reader.ttl):
                continue
            snap = reader.snapshot(wait=max(0.0, deadline - time.monotonic()))
            if snap is not None:
                out[reader.entry.slug] = snap
        return out

    def _metrics_snapshots(self) -> list[Snapshot]:
        readers = list(self.readers.values())
        snaps = self._snapshots(readers, METRICS_WAIT, only_first=False)
        return [snaps[r.entry.slug] for r in readers if r.entry.slug in snaps]

    # ---- auth and small pages

    def _login(self, request: Request) -> Response:
        if not self.guard.uses_login:
            return redirect("/ui/")
        if request.method == "GET":
            return self._message(200, "log in", "", login=True,
                                 back=_next_path(request.arg("next")))
        if request.method != "POST":
            return text(405, "use GET or POST\n", headers=[("Allow", "GET, POST")])
        form = request.form()
        target = _next_path((form.get("next") or [""])[0])
        if self.guard.token_matches((form.get("token") or [""])[0]):
            log.info("status page: login from %s", request.remote)
            return redirect(target, headers=[
                ("Set-Cookie", self.guard.session_cookie(secure=request.secure))])
        log.warning("status page: wrong token at the login form from %s", request.remote)
        return self._message(401, "log in", "wrong token", problem=True, login=True,
                             back=target)

    def _denied(self, request: Request, access: Access) -> Response:
        challenge = [("WWW-Authenticate", 'Bearer realm="bluegreen"')] \
            if access.status == 401 else []
        if access.status == 401 and access.reason == "wrong token":
            log.warning("status page: wrong token for %s from %s", request.path,
                        request.remote)
        if request.path == "/metrics":
            return text(access.status, access.reason + "\n", headers=challenge)
        if request.path.startswith("/ui/api/"):
            return self._json(access.status, {"error": access.reason}, headers=challenge)
        if access.status == 401:
            return self._message(401, "log in", access.reason, login=True,
                                 back=_next_path(request.path), headers=challenge)
        return self._message(access.status, "status page off", access.reason, problem=True)

    def _message(self, status: int, title: str, message: str, *, problem: bool = False,
                 login: bool = False, back: str = "/ui/",
                 headers: list[tuple[str, str]] | None = None) -> Response:
        html = self.templates.get_template("message.html").render(
            title=title, message=message, problem=problem, login=login, next=back)
        return Response(status, html.encode(), headers=list(headers or []))

    def _static(self, name: str) -> Response:
        body = self.static.get(name)
        if body is None:
            return text(404, "not found\n")
        return Response(200, body, content_type=STATIC_TYPES[Path(name).suffix],
                        cache="public, max-age=300")

    def _chrome(self, current: str, access: Access) -> dict[str, Any]:
        return {"nav": [r.entry for r in self.readers.values()], "current": current,
                "every_ms": POLL_MS, "ttl": self.ttl, "logout": access.via == "cookie"}

    @staticmethod
    def _json(status: int, payload: Any, headers: list[tuple[str, str]] | None = None
              ) -> Response:
        body = json.dumps(payload, sort_keys=True, default=str).encode() + b"\n"
        return Response(status, body, content_type="application/json",
                        headers=list(headers or []))


def _count(jobs: list[Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts

