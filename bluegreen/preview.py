"""Prepare now, cut over later: the preview route to a ready idle slot.

A `deploy --no-switch` leaves the idle slot ready; with `preview.token_env` set, requests
carrying that token reach it through the real front door until it is promoted, stopped or
reused. Only the route lives here; the flow (check_no_switch, choose_promote_target) is in
phases.py with the rest of the switch.
"""

from __future__ import annotations

import hashlib
import os

from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.run import Run


def token(cfg: Config) -> str:
    """The preview token from the environment `preview.token_env` names; "" when no
    preview route is configured. A missing or short token is an error naming the variable."""
    name = cfg.preview.token_env
    if not name:
        return ""
    token = os.environ.get(name, "")
    if len(token) < 16:
        raise BluegreenError(
            f"preview.token_env names {name}, which is "
            + ("not set" if not token else "shorter than 16 characters")
            + " in this environment", phase="state", host="local",
            hint=f"export {name}=$(openssl rand -hex 32), or leave preview.token_env empty "
                 "for no preview route; nothing was changed")
    return token


def mark_ready(run: Run) -> str:
    """The slot is healthy and waits for `fab promote`; with a preview configured, requests
    carrying the token reach it through the real front door from now on."""
    state, slot = run.live, run.target
    secret = token(run.cfg)
    note = "no preview route (preview.token_env is not set)"
    if secret:
        # the router gets the token's sha1, never the token (random: no dictionary to try)
        digest = hashlib.sha1(secret.encode()).hexdigest()  # noqa: S324
        for router in run.routers:
            router.set_preview(slot, digest)
        # proven through each front door, as a user would try it (a dry run plans the route)
        for router in [] if run.fleet.dry_run else run.routers:
            router.probe_headers = {run.cfg.preview.header: secret}
            try:
                router.wait_front_door(slot)
            finally:
                router.probe_headers = None
        note = (f"preview: requests with header {run.cfg.preview.header} (or cookie "
                f"{run.cfg.preview.cookie}) = ${run.cfg.preview.token_env} reach {slot} "
                "through the front door")
    state.slots[slot].status = "ready"
    run.ledger.save_state(state)
    return note


def disarm(run: Run) -> None:
    """The idle slot is about to be stopped, reused or promoted: a preview route to it goes
    first (a preview request must never reach a stopped slot). Only where previews are
    configured, and without asking first (there is one route at most, and it can only
    lead to the idle slot). Best effort: a host that cannot be told keeps a route to a
    slot that then answers 502 to the token only."""
    if not run.cfg.preview.token_env:
        return
    for router in run.routers:
        if "preview" not in router.features:
            continue
        try:
            router.set_preview(None)
        except BluegreenError as exc:
            run.report.say(f"    warning: could not remove the preview route on "
                           f"{router.label}: {exc.what.splitlines()[0]}")
