"""HubSpot and Stripe webhook signatures, verified over the raw body in constant time.

HubSpot v3: base64 HMAC-SHA256 (key: the app's client secret) of
`method + uri + body + timestamp`, with 12 escapes of the URI decoded and no others; the
millisecond timestamp must be within 5 minutes of now, either way. v1 and v2 (SHA-256 hex of
`secret + body` and `secret + method + uri + body`) are checked only when no v3 header came.

Stripe: `Stripe-Signature: t=<s>,v1=<hex>[,v1=...]`, hex HMAC-SHA256 of `"{t}." + body`;
any `v1` may match any configured secret, every other scheme (`v0`) is ignored, and `t` must
be within the tolerance of now, either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Literal

Reason = Literal["missing_signature", "bad_signature", "stale_timestamp"]

HUBSPOT_MAX_SKEW_SECONDS = 300
_V3_ESCAPES = {
    "3A": ":",
    "2F": "/",
    "3F": "?",
    "40": "@",
    "21": "!",
    "24": "$",
    "27": "'",
    "28": "(",
    "29": ")",
    "2A": "*",
    "2C": ",",
    "3B": ";",
}
_V3_ESCAPE = re.compile("%(" + "|".join(_V3_ESCAPES) + ")", re.IGNORECASE)
_MAX_TIMESTAMP_DIGITS = 16


class SignatureError(Exception):
    """The request is not proven to come from the provider; `reason` labels the metric."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message


def _same(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.strip().encode("utf-8", "replace"))


# HubSpot ---------------------------------------------------------------------------------------
def hubspot_uri(public_url: str, path: str, query: str) -> str:
    """The URI HubSpot signs: the public base URL, the route path and the query as received."""
    return f"{public_url.rstrip('/')}{path}" + (f"?{query}" if query else "")


def hubspot_v3_uri(uri: str) -> str:
    """Decode exactly the 12 escapes HubSpot's v3 scheme decodes, in one pass."""
    return _V3_ESCAPE.sub(lambda m: _V3_ESCAPES[m.group(1).upper()], uri)


def hubspot_v3_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """Base64 HMAC-SHA256 over `method + decoded uri + body + timestamp`."""
    message = method.encode() + hubspot_v3_uri(uri).encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def hubspot_legacy_signature(
    secret: str, version: Literal["v1", "v2"], method: str, uri: str, body: bytes
) -> str:
    """Hex SHA-256 of `secret + body` (v1) or `secret + method + uri + body` (v2)."""
    if version == "v1":
        return hashlib.sha256(secret.encode() + body).hexdigest()
    return hashlib.sha256(secret.encode() + method.encode() + uri.encode() + body).hexdigest()


def verify_hubspot(
    *,
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
) -> str:
    """Answer the scheme that verified the request (`v3`, `v2`, `v1`) or raise SignatureError.

    `headers` is looked up with lower-case names. With a v3 header only v3 is tried: a failed
    v3 never falls back to an older scheme.
    """
    v3 = headers.get("x-hubspot-signature-v3")
    if v3 is not None:
        timestamp = headers.get("x-hubspot-request-timestamp", "").strip()
        if not timestamp:
            raise SignatureError("missing_signature", "X-HubSpot-Request-Timestamp is missing")
        if not timestamp.isdigit() or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
            raise SignatureError(
                "bad_signature", "X-HubSpot-Request-Timestamp is not epoch milliseconds"
            )
        expected = hubspot_v3_signature(secret, method, uri, body, timestamp)
        if not _same(expected, v3):
            raise SignatureError("bad_signature", "the X-HubSpot-Signature-v3 does not match")
        if abs(now * 1000 - int(timestamp)) > HUBSPOT_MAX_SKEW_SECONDS * 1000:
            raise SignatureError(
                "stale_timestamp", "X-HubSpot-Request-Timestamp is more than 5 minutes from now"
            )
        return "v3"
    legacy = headers.get("x-hubspot-signature")
    if legacy is None:
        raise SignatureError(
            "missing_signature", "no X-HubSpot-Signature-v3 (or X-HubSpot-Signature) header"
        )
    version = headers.get("x-hubspot-signature-version", "").strip().lower()
    if version not in ("v1", "v2"):
        raise SignatureError(
            "bad_signature", "X-HubSpot-Signature-Version must be v1 or v2 (or send v3)"
        )
    expected = hubspot_legacy_signature(secret, version, method, uri, body)  # type: ignore[arg-type]
    if not _same(expected, legacy.lower()):
        raise SignatureError("bad_signature", "the X-HubSpot-Signature does not match")
    return version


# Stripe ----------------------------------------------------------------------------------------
def stripe_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"{timestamp}." + body`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def parse_stripe_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and every `v1` signature of a `Stripe-Signature` header."""
    timestamps: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        scheme, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if scheme == "t":
            timestamps.append(value.strip())
        elif scheme == "v1":
            v1.append(value.strip())
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        raise SignatureError("bad_signature", "Stripe-Signature needs exactly one t=<seconds>")
    if len(timestamps[0]) > _MAX_TIMESTAMP_DIGITS:
        raise SignatureError("bad_signature", "Stripe-Signature's t= is not epoch seconds")
    if not v1:
        raise SignatureError(
            "bad_signature", "Stripe-Signature carries no v1 signature (other schemes are refused)"
        )
    return int(timestamps[0]), v1


def verify_stripe(
    *,
    secrets: Sequence[str],
    header: str | None,
    body: bytes,
    tolerance: int,
    now: float,
) -> int:
    """Answer the signed timestamp when any `v1` matches any secret, else raise SignatureError."""
    if tolerance <= 0:
        raise ValueError("the Stripe tolerance must be positive: 0 would disable the check")
    if not header or not header.strip():
        raise SignatureError("missing_signature", "the Stripe-Signature header is missing")
    timestamp, presented = parse_stripe_header(header)
    matched = False
    for secret in secrets:
        expected = stripe_signature(secret, timestamp, body)
        for signature in presented:
            matched |= _same(expected, signature)
    if not matched:
        raise SignatureError("bad_signature", "no v1 signature of Stripe-Signature matches")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            "stale_timestamp", f"the Stripe-Signature timestamp is more than {tolerance} s from now"
        )
    return timestamp
