"""Signature and token checks, starting from GitHub's published test vector."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bluegreen.automation.signatures import (
    Secret,
    hmac_sha256_hex,
    token_from_request,
    verify_gitea,
    verify_github,
    verify_token,
)

GITHUB_SECRET = Secret("It's a Secret to Everybody")
GITHUB_BODY = b"Hello, World!"
GITHUB_HEX = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_published_test_vector_matches() -> None:
    assert hmac_sha256_hex(GITHUB_SECRET, GITHUB_BODY) == GITHUB_HEX
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_HEX}").ok


def test_github_signature_is_case_insensitive_in_its_hex() -> None:
    assert verify_github(GITHUB_SECRET, GITHUB_BODY, f"sha256={GITHUB_HEX.upper()}").ok


@pytest.mark.parametrize("header, reason", [
    (None, "missing X-Hub-Signature-256"),
    ("", "missing X-Hub-Signature-256"),
    (GITHUB_HEX, "not of the form"),
    ("sha1=" + GITHUB_HEX, "not of the form"),
    ("sha256=" + GITHUB_HEX[:-1] + "0", "does not match"),
    ("sha256=" + GITHUB_HEX + "00", "does not match"),
    ("sha256=ünïcode", "does not match"),
])
def test_github_rejects_missing_malformed_and_wrong_signatures(header: str | None,
                                                                reason: str) -> None:
    verdict = verify_github(GITHUB_SECRET, GITHUB_BODY, header)
    assert not verdict.ok
    assert reason in verdict.reason


def test_github_signature_over_a_different_body_is_rejected() -> None:
    assert not verify_github(GITHUB_SECRET, b"Hello, World?", f"sha256={GITHUB_HEX}").ok


def test_gitea_signature_is_bare_hex_of_the_same_hmac() -> None:
    secret = Secret("gitea-secret")
    body = b'{"ref":"refs/heads/main"}'
    good = hmac.new(b"gitea-secret", body, hashlib.sha256).hexdigest()
    assert verify_gitea(secret, body, good).ok
    assert not verify_gitea(secret, body, "sha256=" + good).ok
    assert not verify_gitea(secret, body, None).ok
    assert "missing" in verify_gitea(secret, body, "").reason


def test_token_check_is_exact() -> None:
    secret = Secret("s3cret-token")
    assert verify_token(secret, "s3cret-token", "token").ok
    for wrong in ("s3cret-toke", "s3cret-token ", "S3CRET-TOKEN", "", None):
        assert not verify_token(secret, wrong, "token").ok


def test_rejection_reasons_never_contain_the_secret_or_the_presented_value() -> None:
    secret = Secret("super-secret-value")
    presented = "attacker-guess-123"
    reasons = [
        verify_token(secret, presented, "X-Gitlab-Token").reason,
        verify_github(secret, b"x", "sha256=" + presented).reason,
        verify_gitea(secret, b"x", presented).reason,
    ]
    for reason in reasons:
        assert "super-secret-value" not in reason
        assert presented not in reason
    assert "super-secret-value" not in repr(secret) and "super" not in str(secret)


@pytest.mark.parametrize("query, headers, expected", [
    ("token=q1", {}, "q1"),
    ("a=1&token=q2", {}, "q2"),
    ("", {"token": "h1"}, "h1"),
    ("", {"authorization": "Bearer b1"}, "b1"),
    ("", {"authorization": "bearer b2"}, "b2"),
    ("token=q3", {"token": "h3"}, "h3"),  # the header wins: query strings end up in access logs
    ("", {"authorization": "Basic dXNlcjpwdw=="}, None),
    ("", {}, None),
    ("token=", {}, None),
])
def test_generic_token_is_found_in_header_bearer_or_query(query: str, headers: dict[str, str],
                                                          expected: str | None) -> None:
    assert token_from_request(query, headers) == expected
