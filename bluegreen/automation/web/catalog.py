"""Which apps the status page shows: every app config that automation.toml's rules name.

A rule's `config` is the app's bluegreen.toml (the same file its deploy command gets), so
the page reads exactly the state the deploys write. Several rules (branches, environments)
may name one file: that is one app, with several lanes. Rules without a config (action
"jenkins": Jenkins deploys by itself) have jobs but no state the service could read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from bluegreen.automation.rules import Rule

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# scp-like remotes (git@host:owner/name.git) and URLs; file paths give no web page
_SCP_REMOTE = re.compile(r"^[\w.-]+@(?P<host>[\w.-]+):(?P<path>[^/].*)$")
_URL_REMOTE = re.compile(r"^(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[\w.-]+)(?::\d+)?/"
                         r"(?P<path>.+)$")


@dataclass(frozen=True)
class AppEntry:
    slug: str  # the page's name for it: /ui/app/<slug>; unique even when app names repeat
    name: str  # the rule's app name (the config's `app` once read)
    config_path: str
    lanes: tuple[str, ...]  # app/environment lanes whose jobs deploy with this config
    commit_base: str  # https://forge/owner/name, for commit links; "" when not derivable


def repo_web_base(clone_url: str) -> str:
    """The web page of a clone URL on the usual forges (GitHub, GitLab, Gitea, Forgejo all
    answer /owner/name/commit/<sha>); "" for a path or anything unrecognised, so the page
    shows the SHA as text instead of a guessed link."""
    url = clone_url.strip()
    match = _URL_REMOTE.match(url) or _SCP_REMOTE.match(url)
    if not match:
        return ""
    path = match.group("path").strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    if not path or ".." in path.split("/") or not re.fullmatch(r"[\w./~-]+", path):
        return ""
    return f"https://{match.group('host')}/{path}"


def build_catalog(rules: Iterable[Rule]) -> list[AppEntry]:
    """One entry per distinct config file, in the order the rules first name them."""
    by_config: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.config:
            by_config.setdefault(rule.config, []).append(rule)
    entries: list[AppEntry] = []
    taken: set[str] = set()
    for config_path, group in by_config.items():
        first = group[0]
        slug = _unique(_SLUG_UNSAFE.sub("-", first.app) or "app", first.environment, taken)
        taken.add(slug)
        lanes = tuple(dict.fromkeys(rule.lane for rule in group))
        base = next((b for b in (repo_web_base(r.clone_url) for r in group if r.clone_url)
                     if b), "")
        entries.append(AppEntry(slug=slug, name=first.app, config_path=config_path,
                                lanes=lanes, commit_base=base))
    return entries


def _unique(name: str, environment: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    candidate = f"{name}-{_SLUG_UNSAFE.sub('-', environment)}"
    n = 2
    while candidate in taken:
        candidate = f"{name}-{_SLUG_UNSAFE.sub('-', environment)}-{n}"
        n += 1
    return candidate
