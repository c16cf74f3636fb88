"""The webhook receiver: verify, parse, match, enqueue, answer. It never deploys inline.

Status codes (a sender retries non-2xx, and a person reads the delivery log):
  202  a job was enqueued: {"status": "queued", "job": id, "jobs": [...], "superseded": [...]}
  200  understood, nothing to do - {"status": "pong"} for GitHub's ping;
       {"status": "ignored", "reason": ...} for an unhandled event type, a tag, a deleted
       branch, a branch no rule matches, a Jenkins phase/status that does not deploy;
       {"status": "duplicate", "job": id} for a replayed delivery id (or a timestamped
       generic signature seen before). A replay is answered 2xx on purpose: the first
       delivery was accepted, and a non-2xx would only make the sender retry (and show a red
       delivery for a push that is deploying fine). Delivery ids are a courtesy to honest
       senders, not the replay defence: the sender picks them. A correctly signed old push
       under a new id is queued, and the worker's guards (guards.py) skip it.
  400  malformed JSON, not an object, a required field missing or malformed, no event header
  401  missing or wrong signature/token; a timestamped signature outside its window
  404  unknown path, or a provider whose secret is not configured (endpoint disabled)
  405  wrong method
  411  no Content-Length
  413  Content-Length over service.max_body_bytes (checked before reading; the read is capped)
  415  a form-encoded body: configure the webhook to send application/json
The order matters: size before signature (never read an unbounded body), signature before
parsing (an unauthenticated sender learns nothing about our parser).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bluegreen.automation import signatures
from bluegreen.automation.events import (
    BadPayload,
    BuildEvent,
    Event,
    Ignored,
    Pong,
    parse_generic,
    parse_gitea,
    parse_github,
    parse_gitlab,
    parse_jenkins,
)
from bluegreen.automation.intake import requests_for
from bluegreen.automation.jobqueue import STATES, JobQueue
from bluegreen.automation.settings import Secrets, Settings
from bluegreen.automation.web import StatusWeb
from bluegreen.automation.web.http import Request

log = logging.getLogger("bluegreen.automation.wsgi")

HOOK_PROVIDERS = ("github", "gitlab", "gitea", "generic", "jenkins")
MAX_DELIVERY_ID = 200
_STATUS_TEXT = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
                404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
                413: "Content Too Large", 415: "Unsupported Media Type",
                500: "Internal Server Error", 503: "Service Unavailable"}

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_body(request: Request, limit: int) -> bytes:
    if request.header("content-type").split(";")[0].strip().lower() in (
            "application/x-www-form-urlencoded", "multipart/form-data"):
        raise Rejected(415, "form-encoded body; set the webhook content type to application/json")
    raw_length = request.header("content-length")
    if not raw_length:
        raise Rejected(411, "Content-Length required")
    try:
        length = int(raw_length)
    except ValueError:
        raise Rejected(400, "Content-Length is not a number") from None
    if length < 0:
        raise Rejected(400, "Content-Length is negative")
    if length > limit:
        raise Rejected(413, f"body of {length} bytes is over the limit of {limit}")
    stream = request.environ["wsgi.input"]
    chunks: list[bytes] = []
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def verify(provider: str, secret: signatures.Secret, request: Request, body: bytes, *,
           generic_auth: str = "either", tolerance: float = 300.0,
           now: float | None = None) -> signatures.Verdict:
    if provider == "generic":
        return verify_generic(secret, request, body, generic_auth=generic_auth,
                              tolerance=tolerance, now=time.time() if now is None else now)
    if provider == "github":
        return signatures.verify_github(secret, body, request.header("x-hub-signature-256"))
    if provider == "gitea":
        bare = request.header("x-gitea-signature", "x-forgejo-signature")
        if bare:
            return signatures.verify_gitea(secret, body, bare)
        return signatures.verify_github(secret, body, request.header("x-hub-signature-256"))
    if provider == "gitlab":
        return signatures.verify_token(secret, request.header("x-gitlab-token"),
                                       "X-Gitlab-Token")
    presented = signatures.token_from_request(request.query_string, request.headers)
    return signatures.verify_token(secret, presented, "token")


def verify_generic(secret: signatures.Secret, request: Request, body: bytes, *,
                   generic_auth: str, tolerance: float, now: float) -> signatures.Verdict:
    """generic.auth: "signature" needs X-Bluegreen-Signature (t=..,v1=.., a bounded window);
    "token" needs the plain token; "either" checks the signature when one is sent (and then
    only it: a bad signature is not rescued by a token) and the token otherwise."""
    header = request.header(signatures.TIMESTAMP_HEADER)
    if generic_auth == "signature" or (generic_auth == "either" and header):
        return signatures.verify_timestamped(secret, body, header, now=now, tolerance=tolerance)
    presented = signatures.token_from_request(request.query_string, request.headers)
    return signatures.verify_token(secret, presented, "token")


def signature_key(secret: signatures.Secret, request: Request, body: bytes) -> str | None:
    """A timestamped signature is single-use inside its window: the key that says so. It is
    the one valid MAC for this time and body, computed here, so dropping or adding other
    v1= values to a captured header does not make it a new request."""
    parsed = signatures.parse_timestamped(request.header(signatures.TIMESTAMP_HEADER))
    if parsed is None:
        return None
    mac = signatures.hmac_sha256_hex(secret, parsed.signed_time.encode() + b"." + body)
    return f"t={parsed.signed_time},v1={mac}"


def delivery_header(provider: str, request: Request, generic_header: str) -> str:
    names = {
        "github": ("x-github-delivery",),
        "gitea": ("x-gitea-delivery", "x-forgejo-delivery", "x-github-delivery"),
        # Idempotency-Key is GitLab's retry-stable id; the UUID headers are older fallbacks.
        "gitlab": ("idempotency-key", "x-gitlab-webhook-uuid", "x-gitlab-event-uuid"),
        "generic": (generic_header,) if generic_header else (),
    }.get(provider, ())
    return request.header(*names) if names else ""


def event_header(provider: str, request: Request) -> str:
    names = {"github": ("x-github-event",),
             "gitea": ("x-gitea-event", "x-forgejo-event", "x-github-event"),
             "gitlab": ("x-gitlab-event",)}.get(provider)
    if names is None:
        return ""
    value = request.header(*names)
    if not value:
        raise Rejected(400, f"missing event header ({names[0]})")
    return value


def _json_body(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True).encode() + b"\n"


class HookApp:
    def __init__(self, settings: Settings, secrets: Secrets, queue: JobQueue, *,
                 wake: Callable[[str], None],
                 health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.settings = settings
        self.secrets = secrets
        self.queue = queue
        self.wake = wake
        self.health = health
        # /ui/ and /metrics: HTML and text, with their own auth (bluegreen.automation.web)
        self.web = StatusWeb(settings, secrets, queue)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if StatusWeb.handles(environ.get("PATH_INFO", "") or "/"):
            return self.web(environ, start_response)
        request = Request.from_environ(environ)
        try:
            reply = self.route(request)
        except Exception:
            log.exception("internal error handling %s %s", request.method, request.path)
            reply = Reply(500, {"status": "error", "error": "internal error (see service log)"})
        body = _json_body(reply.body)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *reply.headers]
        start_response(f"{reply.status} {_STATUS_TEXT.get(reply.status, '')}".strip(), headers)
        return [body]

    def route(self, request: Request) -> Reply:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/hooks/") and path[len("/hooks/"):] in HOOK_PROVIDERS:
            if request.method != "POST":
                return Reply(405, {"status": "rejected", "error": "use POST"},
                             (("Allow", "POST"),))
            return self.hook(path[len("/hooks/"):], request)
        if path in ("/healthz", "/jobs"):
            if request.method != "GET":
                return Reply(405, {"status": "rejected", "error": "use GET"}, (("Allow", "GET"),))
            return self.healthz() if path == "/healthz" else self.jobs(request)
        return Reply(404, {"status": "rejected", "error": f"no such endpoint {path[:100]!r}"})

    # ---- hooks ---------------------------------------------------------------------------

    def hook(self, provider: str, request: Request) -> Reply:
        delivery = ""
        try:
            secret = self.secrets.by_provider.get(provider)
            if secret is None:
                raise Rejected(404, f"endpoint /hooks/{provider} is not configured "
                               f"(no secrets.{provider})")
            body = read_body(request, self.settings.service.max_body_bytes)
            delivery = delivery_header(provider, request, self.settings.generic_delivery_header)
            verdict = verify(provider, secret, request, body,
                             generic_auth=self.settings.generic_auth,
                             tolerance=self.settings.generic_signature_tolerance)
            if not verdict.ok:
                raise Rejected(401, verdict.reason)
            if len(delivery) > MAX_DELIVERY_ID:
                raise Rejected(400, f"delivery id longer than {MAX_DELIVERY_ID} characters")
            event_name = event_header(provider, request)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise Rejected(400, f"body is not valid JSON: {exc}"[:300]) from None
            event = self._parse(provider, event_name, payload)
            if isinstance(event, BuildEvent):
                delivery = event.delivery_id  # one build deploys once, whatever the phase
            elif not delivery:
                # No id header: an identical body is the same delivery replayed.
                delivery = "body-sha256:" + hashlib.sha256(body).hexdigest()
            signed = signature_key(secret, request, body) if self._signed(provider, request) \
                else None
            return self._enqueue(provider, delivery, event, request, signed)
        except Rejected as rejected:
            log.warning("rejected provider=%s remote=%s status=%d reason=%r delivery=%r",
                        provider, request.remote, rejected.status, rejected.reason,
                        delivery[:100])
            return Reply(rejected.status, {"status": "rejected", "error": rejected.reason})
        except Pong:
            log.info("ping provider=%s remote=%s delivery=%r", provider, request.remote,
                     delivery[:100])
            return Reply(200, {"status": "pong"})
        except Ignored as ignored:
            log.info("ignored provider=%s remote=%s reason=%r delivery=%r", provider,
                     request.remote, ignored.reason, delivery[:100])
            return Reply(200, {"status": "ignored", "reason": ignored.reason})

    def _parse(self, provider: str, event_name: str, payload: Any) -> Event:
        try:
            if provider == "github":
                return parse_github(event_name, payload)
            if provider == "gitea":
                return parse_gitea(event_name, payload)
            if provider == "gitlab":
                return parse_gitlab(event_name, payload)
            if provider == "generic":
                return parse_generic(payload, self.settings.generic)
            return parse_jenkins(payload)
        except BadPayload as bad:
            raise Rejected(400, bad.reason) from None

    def _signed(self, provider: str, request: Request) -> bool:
        return provider == "generic" and self.settings.generic_auth != "token" and bool(
            request.header(signatures.TIMESTAMP_HEADER))

    def _enqueue(self, provider: str, delivery: str, event: Event, request: Request,
                 signature: str | None = None) -> Reply:
        requests = requests_for(self.settings.rules, event, delivery)
        submitted = self.queue.submit(provider, delivery, requests, also_seen=signature)
        if submitted.duplicate:
            log.info("duplicate provider=%s remote=%s delivery=%r jobs=%s", provider,
                     request.remote, delivery[:100], submitted.job_ids)
            reason = ("this delivery id was already accepted" if submitted.job_ids
                      else "this signed request was already accepted")
            return Reply(200, {"status": "duplicate", "job": (submitted.job_ids or [None])[0],
                               "jobs": submitted.job_ids, "reason": reason})
        for req in requests:
            self.wake(req.lane)
        log.info("queued provider=%s remote=%s delivery=%r branch=%r commit=%s jobs=%s "
                 "superseded=%s", provider, request.remote, delivery[:100], event.branch,
                 requests[0].sha[:12] or "-", submitted.job_ids, submitted.superseded)
        return Reply(202, {"status": "queued", "job": submitted.job_ids[0],
                           "jobs": submitted.job_ids, "superseded": submitted.superseded,
                           "lanes": [r.lane for r in requests]})

    # ---- reading -------------------------------------------------------------------------

    def healthz(self) -> Reply:
        ok, details = self.health()
        return Reply(200 if ok else 503, {"status": "ok" if ok else "degraded", **details})

    def jobs(self, request: Request) -> Reply:
        query = request.query
        states = [s for value in query.get("state", []) for s in value.split(",") if s]
        unknown = [s for s in states if s not in STATES]
        if unknown:
            return Reply(400, {"status": "rejected",
                               "error": f"unknown state {unknown[0][:40]!r}; one of {STATES}"})
        try:
            limit = int(query.get("limit", ["50"])[0])
        except ValueError:
            return Reply(400, {"status": "rejected", "error": "limit must be a number"})
        limit = max(1, min(limit, 500))
        app = query.get("app", [""])[0]
        jobs = self.queue.list_jobs(states=states, app=app, limit=limit)
        return Reply(200, {"jobs": [job.public() for job in jobs],
                           "counts": self.queue.counts()})
