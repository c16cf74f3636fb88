"""From an event to the jobs it asks for: the part the webhook receiver and the poller share,
so a polled push and a webhook push enqueue exactly the same job. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from bluegreen.automation.events import BuildEvent, Event, Ignored
from bluegreen.automation.jenkins_notify import check_ready
from bluegreen.automation.jobqueue import JobRequest
from bluegreen.automation.rules import DEPLOY_ARTIFACT, Rule, match_rules, no_match_reason


def requests_for(rules: Sequence[Rule], event: Event,
                 delivery_id: str | None) -> list[JobRequest]:
    """One JobRequest per matching rule. Raises Ignored when no rule wants the event."""
    matched = match_rules(rules, event)
    if not matched:
        raise Ignored(no_match_reason(event))
    ready: list[Rule] = []
    waiting: list[str] = []
    for rule in matched:
        if rule.action == DEPLOY_ARTIFACT and isinstance(event, BuildEvent):
            try:
                check_ready(event, rule.artifact)
            except Ignored as early:
                waiting.append(early.reason)
                continue
        ready.append(rule)
    if not ready:
        raise Ignored(waiting[0])
    if isinstance(event, BuildEvent):
        source, sha, build_url = event.job, event.commit, event.build_url
    else:
        source, sha, build_url = event.repo, event.sha, ""
    return [
        JobRequest(
            lane=rule.lane,
            app=rule.app,
            environment=rule.environment,
            rule=rule.name,
            action=rule.action,
            provider=event.provider,
            event=event.to_dict(),
            delivery_id=delivery_id,
            repo=source,
            branch=event.branch,
            sha=sha,
            who=event.who,
            build_url=build_url,
        )
        for rule in ready
    ]
