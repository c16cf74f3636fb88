"""Trigger a Jenkins job through its remote API and follow it to the build it started.

POST {jenkins}/job/NAME/buildWithParameters with user + API token (an API token needs no
CSRF crumb) answers 201 with `Location: .../queue/item/N/`. The queue item shows
`executable.url` once an executor picked the build up. The queue URL is rebuilt on our
configured Jenkins URL, so the credentials never go to a host Jenkins merely named.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from urllib.parse import quote, urljoin, urlsplit

import requests

from bluegreen.automation.steps import JobCancelled, JobFailed

_QUEUE_ITEM = re.compile(r"/queue/item/(\d+)/?$")


def job_path(job_name: str) -> str:
    """`folder/app` -> `job/folder/job/app/` (relative; each segment URL-quoted)."""
    parts = [p for p in job_name.split("/") if p]
    if not parts:
        raise ValueError("empty Jenkins job name")
    return "".join(f"job/{quote(p, safe='')}/" for p in parts)


def queue_api_url(base_url: str, location: str) -> str:
    path = urlsplit(location).path
    match = _QUEUE_ITEM.search(path)
    if match is None:
        raise JobFailed(f"Jenkins answered 201 with an unexpected Location {location[:200]!r}")
    return urljoin(base_url, f"queue/item/{match.group(1)}/api/json")


def trigger(session: requests.Session, *, base_url: str, job_name: str,
            parameters: Mapping[str, str], timeout: float) -> str:
    """Queue the build; return the queue item's API URL."""
    url = urljoin(base_url, job_path(job_name) + "buildWithParameters")
    try:
        response = session.post(url, data=dict(parameters), timeout=timeout,
                                allow_redirects=False)
    except requests.RequestException as exc:
        raise JobFailed(f"Jenkins unreachable at {base_url}: {type(exc).__name__}") from None
    if response.status_code != 201:
        hint = {401: "check jenkins.user and the API token",
                403: "the user lacks Job/Build permission",
                404: f"no job {job_name!r}",
                400: "the job is not parameterized or a parameter name is wrong"}
        why = hint.get(response.status_code, "see the Jenkins log")
        raise JobFailed(f"Jenkins refused buildWithParameters for {job_name!r}: HTTP "
                        f"{response.status_code} ({why})")
    location = response.headers.get("Location", "")
    if not location:
        raise JobFailed("Jenkins answered 201 without a Location header")
    return queue_api_url(base_url, location)


def wait_for_build(session: requests.Session, queue_url: str, *, poll_interval: float,
                   timeout: float, request_timeout: float, cancel: threading.Event) -> str:
    """Poll the queue item until it names its build; return the build URL."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = session.get(queue_url, timeout=request_timeout)
        except requests.RequestException as exc:
            raise JobFailed(f"Jenkins queue item unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise JobFailed(f"Jenkins queue item {queue_url} answered HTTP {response.status_code}")
        try:
            item = response.json()
        except ValueError:
            raise JobFailed("Jenkins queue item is not JSON") from None
        if item.get("cancelled"):
            raise JobFailed("the queued Jenkins build was cancelled")
        executable = item.get("executable") or {}
        build_url = executable.get("url") if isinstance(executable, dict) else None
        if isinstance(build_url, str) and build_url:
            return build_url
        if time.monotonic() >= deadline:
            why = str(item.get("why") or "no reason given")[:200]
            raise JobFailed(f"the Jenkins build did not leave the queue in {timeout:.0f}s: {why}")
        if cancel.wait(poll_interval):
            raise JobCancelled("jenkins queue")
