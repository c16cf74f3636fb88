"""Signature and token checks, starting from GitHub's published test vector."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bluegreen.automation.signatures import (
    Secret,
    Verdict,
    hmac_sha256_hex,
    parse_timestamped,
    sign_timestamped,
    token_from_request,
    verify_gitea,
    verify_github,
    verify_timestamped,
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


# ---- timestamped signatures (generic endpoint: the Stripe / Slack scheme) -------------------

STAMP_SECRET = Secret("stamp-secret")
STAMP_BODY = b'{"ref":"refs/heads/main","after":"' + b"a" * 40 + b'"}'
NOW = 1_700_000_000


def stamped(timestamp: int, body: bytes = STAMP_BODY, secret: bytes = b"stamp-secret") -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check(header: str | None, *, now: float = NOW, tolerance: float = 300.0,
          body: bytes = STAMP_BODY) -> Verdict:
    return verify_timestamped(STAMP_SECRET, body, header, now=now, tolerance=tolerance)


def test_timestamped_signature_is_the_hmac_of_time_dot_body() -> None:
    assert sign_timestamped(STAMP_SECRET, STAMP_BODY, NOW) == stamped(NOW)
    assert check(stamped(NOW)).ok


def test_timestamped_signature_inside_the_window_either_way_is_accepted() -> None:
    assert check(stamped(NOW - 299)).ok  # sent a while ago
    assert check(stamped(NOW + 299)).ok  # the sender's clock runs a little ahead
    assert check(stamped(NOW - 30), tolerance=30).ok


def test_timestamped_signature_with_the_wrong_secret_is_rejected() -> None:
    verdict = check(stamped(NOW, secret=b"other-secret"))
    assert not verdict.ok and "does not match" in verdict.reason


def test_timestamped_signature_over_another_body_or_time_is_rejected() -> None:
    assert not check(stamped(NOW), body=STAMP_BODY + b" ").ok
    moved = stamped(NOW).replace(f"t={NOW}", f"t={NOW + 1}")  # same MAC, another time
    assert not check(moved).ok


def test_stale_timestamped_signature_is_rejected_even_when_it_matches() -> None:
    verdict = check(stamped(NOW - 301))
    assert not verdict.ok and "301s old" in verdict.reason and "300s" in verdict.reason
    assert not check(stamped(NOW - 31), tolerance=30).ok


def test_future_timestamped_signature_is_rejected() -> None:
    verdict = check(stamped(NOW + 3600))
    assert not verdict.ok and "3600s in the future" in verdict.reason


@pytest.mark.parametrize("header", [
    "",
    None,
    "garbage",
    f"v1={'a' * 64}",  # no timestamp
    f"t={NOW}",  # no signature
    f"t={NOW},v1={'a' * 63}",  # short hex
    f"t={NOW},v1={'g' * 64}",  # not hex
    f"t=-5,v1={'a' * 64}",
    f"t=1e9,v1={'a' * 64}",
    f"t={NOW},t={NOW},v1={'a' * 64}",  # two timestamps
    "t=\uff11\uff12\uff13,v1=" + "a" * 64,  # non-ASCII (fullwidth) digits
    f"t={NOW},v1={'a' * 64},junk",
    f"t={NOW},v1=" + "a" * 2000,
])
def test_malformed_timestamped_signatures_are_rejected(header: str | None) -> None:
    verdict = check(header)
    assert not verdict.ok
    assert "missing" in verdict.reason or "malformed" in verdict.reason


def test_timestamped_signature_accepts_any_of_several_v1_and_ignores_other_schemes() -> None:
    good = stamped(NOW).split(",")[1]
    rotated = f"t={NOW}, v0=deadbeef, v1={'0' * 64}, {good}"
    assert check(rotated).ok


def test_timestamped_signature_keeps_the_time_exactly_as_sent() -> None:
    padded = f"0{NOW}"
    mac = hmac.new(b"stamp-secret", padded.encode() + b"." + STAMP_BODY,
                   hashlib.sha256).hexdigest()
    assert check(f"t={padded},v1={mac}").ok


def test_timestamped_rejections_never_contain_the_signature() -> None:
    header = stamped(NOW, secret=b"guess")
    for verdict in (check(header), check(header, now=NOW + 10_000)):
        assert header.split("v1=")[1] not in verdict.reason
        assert "stamp-secret" not in verdict.reason


def test_parse_timestamped_reads_time_and_signatures() -> None:
    parsed = parse_timestamped(f"t={NOW},v1={'b' * 64},v1={'C' * 64}")
    assert parsed is not None and parsed.timestamp == NOW
    assert parsed.signatures == ("b" * 64, "c" * 64)
