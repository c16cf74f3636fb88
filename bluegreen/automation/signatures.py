"""Proof that a request came from who it claims: one check per Git host, all constant-time.

Each check returns a Verdict whose reason goes to the log. A reason names what was wrong
(missing, malformed, mismatch) and never contains the secret or the presented value, so a
log line can be pasted into a ticket.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs


class Secret:
    """A shared secret that does not print itself, so it cannot leak through a repr or log."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    @property
    def value(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


ACCEPTED = Verdict(True)


def hmac_sha256_hex(secret: Secret, body: bytes) -> str:
    return hmac.new(secret.value, body, hashlib.sha256).hexdigest()


def _same(expected: str, presented: str) -> bool:
    # Both sides as bytes: compare_digest rejects non-ASCII str, and a header is attacker input.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def verify_github(secret: Secret, body: bytes, header: str | None) -> Verdict:
    """GitHub (and Gitea's GitHub-compatible header): `sha256=<hex HMAC-SHA256 of the body>`."""
    if not header:
        return Verdict(False, "missing X-Hub-Signature-256")
    presented = header.strip()
    if not presented.startswith("sha256="):
        return Verdict(False, "X-Hub-Signature-256 is not of the form sha256=<hex>")
    expected = "sha256=" + hmac_sha256_hex(secret, body)
    if _same(expected, presented.lower()):
        return ACCEPTED
    return Verdict(False, "X-Hub-Signature-256 does not match the body")


def verify_gitea(secret: Secret, body: bytes, header: str | None) -> Verdict:
    """Gitea/Forgejo: X-Gitea-Signature (or X-Forgejo-Signature) is the bare hex HMAC-SHA256."""
    if not header:
        return Verdict(False, "missing X-Gitea-Signature")
    if _same(hmac_sha256_hex(secret, body), header.strip().lower()):
        return ACCEPTED
    return Verdict(False, "X-Gitea-Signature does not match the body")


def verify_token(secret: Secret, presented: str | None, what: str) -> Verdict:
    """A plain shared token (GitLab's X-Gitlab-Token, the generic endpoint, Jenkins)."""
    if not presented:
        return Verdict(False, f"missing {what}")
    if hmac.compare_digest(secret.value, presented.encode("utf-8", "surrogateescape")):
        return ACCEPTED
    return Verdict(False, f"{what} does not match")


def token_from_request(query_string: str, headers: Mapping[str, str]) -> str | None:
    """Where the Generic Webhook Trigger convention puts a token: `token` header, then
    `Authorization: Bearer`, then the `token` query parameter. Headers are lower-cased names."""
    header_token = headers.get("token", "").strip()
    if header_token:
        return header_token
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(query_string, keep_blank_values=False).get("token", [])
    return values[0] if values else None


# ---- timestamped signatures (the Stripe / Slack scheme) -----------------------------------

TIMESTAMP_HEADER = "X-Bluegreen-Signature"
MAX_SIGNATURE_HEADER = 1024


def sign_timestamped(secret: Secret, body: bytes, timestamp: int) -> str:
    """The header value a sender computes: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "<t>." + body>`. Binding the time into the MAC is what makes an old request useless."""
    return f"t={timestamp},v1={hmac_sha256_hex(secret, str(timestamp).encode() + b'.' + body)}"


@dataclass(frozen=True)
class TimestampedSignature:
    timestamp: int
    signatures: tuple[str, ...]  # every v1 value (a sender rotating secrets may send two)
    signed_time: str  # t exactly as sent: the MAC covers these bytes


def parse_timestamped(header: str) -> TimestampedSignature | None:
    """`t=1700000000,v1=<64 hex>[,v1=...]`, spaces allowed after commas; None if malformed.
    Unknown schemes (v0=, v2=) are ignored, as Stripe does, so senders can add new ones."""
    if len(header) > MAX_SIGNATURE_HEADER:
        return None
    timestamp: int | None = None
    signed_time = ""
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit() \
                    or len(value) > 12:
                return None
            timestamp, signed_time = int(value), value
        elif key == "v1":
            hexed = value.lower()
            if len(hexed) != 64 or not hexed.isascii() or any(c not in "0123456789abcdef"
                                                              for c in hexed):
                return None
            signatures.append(hexed)
    if timestamp is None or not signatures:
        return None
    return TimestampedSignature(timestamp, tuple(signatures), signed_time)


def verify_timestamped(secret: Secret, body: bytes, header: str | None, *, now: float,
                       tolerance: float) -> Verdict:
    """Accept only a signature over this body made within `tolerance` seconds of `now`,
    either way (a sender's clock may run a little ahead). Constant-time comparison."""
    if not header:
        return Verdict(False, f"missing {TIMESTAMP_HEADER}")
    parsed = parse_timestamped(header.strip())
    if parsed is None:
        return Verdict(False, f"{TIMESTAMP_HEADER} is malformed (expected "
                              "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">)")
    age = now - parsed.timestamp
    if age > tolerance:
        return Verdict(False, f"{TIMESTAMP_HEADER} timestamp is {age:.0f}s old, over the "
                              f"tolerance of {tolerance:.0f}s (a replay, or a slow clock)")
    if -age > tolerance:
        return Verdict(False, f"{TIMESTAMP_HEADER} timestamp is {-age:.0f}s in the future, "
                              f"over the tolerance of {tolerance:.0f}s (check the sender's clock)")
    expected = hmac_sha256_hex(secret, parsed.signed_time.encode() + b"." + body)
    # Compare against every v1 without stopping early: the time taken says nothing.
    matched = False
    for presented in parsed.signatures:
        matched |= _same(expected, presented)
    if matched:
        return ACCEPTED
    return Verdict(False, f"{TIMESTAMP_HEADER} does not match the body and timestamp")
