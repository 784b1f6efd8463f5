"""HubSpot and Stripe webhook signatures, verified over the raw body in constant time.

HubSpot v3: base64 HMAC-SHA256 (key: the app's client secret) of
`method + uri + body + timestamp`, with 12 escapes of the URI decoded and no others; the
millisecond timestamp must be within 5 minutes of now, either way. v1 and v2 (SHA-256 hex of
`secret + body` and `secret + method + uri + body`) carry no timestamp, so a captured request
verifies forever: they are refused unless `accept_legacy` (HUBSPOT_ACCEPT_LEGACY_SIGNATURES),
and even then checked only when no v3 header came.

Stripe: `Stripe-Signature: t=<s>,v1=<hex>[,v1=...]`, hex HMAC-SHA256 of `"{t}." + body`;
any `v1` (at most 16) may match any configured secret, every other scheme (`v0`) is ignored,
and `t` must be within the tolerance of now, either way.

Every header is untrusted input: one longer than `MAX_SIGNATURE_HEADER` is refused before it
is parsed, numbers are plain ASCII digits (`parse_ascii_int`), and whatever a header holds the
answer is a verified scheme or a `SignatureError`, never another exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from app.domain.errors import SignatureError as SignatureError  # raised here
from app.domain.rules import parse_ascii_int

Reason = Literal["missing_signature", "bad_signature", "stale_timestamp", "legacy_signature"]

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
# Epoch milliseconds (HubSpot) or seconds (Stripe): 16 digits reach far beyond any real clock.
_MAX_TIMESTAMP = 10**16 - 1
# A real Stripe-Signature is about 150 characters, a HubSpot one under 100: anything longer is
# refused before it is split or compared.
MAX_SIGNATURE_HEADER = 4096
MAX_STRIPE_V1 = 16
# Optional whitespace around a header value or a Stripe item (RFC 9110: space and tab only;
# str.strip() would also remove characters such as U+0085 and U+00A0 that arrive as latin-1).
_OWS = " \t"
LEGACY_DISABLED = (
    "X-HubSpot-Signature-v3 is required: v1/v2 signatures (X-HubSpot-Signature) carry no "
    "timestamp, so a captured request could be replayed at any time. HubSpot sends v3 on every "
    "request; to accept v1/v2 anyway set HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true"
)


def _same(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.strip(_OWS).encode("utf-8", "replace"))


def _header(headers: Mapping[str, str], name: str, shown: str) -> str | None:
    """A header's value, refused at once when it is longer than any real one."""
    value = headers.get(name)
    if value is not None and len(value) > MAX_SIGNATURE_HEADER:
        raise SignatureError(
            "bad_signature", f"{shown} is longer than {MAX_SIGNATURE_HEADER} characters"
        )
    return value


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
    accept_legacy: bool = False,
) -> str:
    """Answer the scheme that verified the request (`v3`, `v2`, `v1`) or raise SignatureError.

    `headers` is looked up with lower-case names. With a v3 header only v3 is tried: a failed
    v3 never falls back to an older scheme. Without one, v1/v2 are tried only when
    `accept_legacy`; otherwise the request is refused (`legacy_signature`).
    """
    v3 = _header(headers, "x-hubspot-signature-v3", "X-HubSpot-Signature-v3")
    if v3 is not None:
        raw_timestamp = _header(
            headers, "x-hubspot-request-timestamp", "X-HubSpot-Request-Timestamp"
        )
        timestamp = (raw_timestamp or "").strip(_OWS)
        if not timestamp:
            raise SignatureError("missing_signature", "X-HubSpot-Request-Timestamp is missing")
        millis = parse_ascii_int(timestamp, maximum=_MAX_TIMESTAMP)
        if millis is None:
            raise SignatureError(
                "bad_signature", "X-HubSpot-Request-Timestamp is not epoch milliseconds"
            )
        expected = hubspot_v3_signature(secret, method, uri, body, timestamp)
        if not _same(expected, v3):
            raise SignatureError("bad_signature", "the X-HubSpot-Signature-v3 does not match")
        if abs(now * 1000 - millis) > HUBSPOT_MAX_SKEW_SECONDS * 1000:
            raise SignatureError(
                "stale_timestamp", "X-HubSpot-Request-Timestamp is more than 5 minutes from now"
            )
        return "v3"
    legacy = _header(headers, "x-hubspot-signature", "X-HubSpot-Signature")
    if legacy is None:
        raise SignatureError(
            "missing_signature", "no X-HubSpot-Signature-v3 (or X-HubSpot-Signature) header"
        )
    if not accept_legacy:
        raise SignatureError("legacy_signature", LEGACY_DISABLED)
    raw_version = _header(headers, "x-hubspot-signature-version", "X-HubSpot-Signature-Version")
    version = (raw_version or "").strip(_OWS).lower()
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
    """The timestamp and every `v1` signature of a `Stripe-Signature` header.

    Refused (`SignatureError`) when over `MAX_SIGNATURE_HEADER` characters, with more than
    `MAX_STRIPE_V1` v1 entries, or without exactly one `t=` of plain ASCII digits.
    """
    if len(header) > MAX_SIGNATURE_HEADER:
        raise SignatureError(
            "bad_signature", f"Stripe-Signature is longer than {MAX_SIGNATURE_HEADER} characters"
        )
    timestamps: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        scheme, sep, value = item.strip(_OWS).partition("=")
        if not sep:
            continue
        if scheme == "t":
            timestamps.append(value.strip(_OWS))
        elif scheme == "v1":
            v1.append(value.strip(_OWS))
            if len(v1) > MAX_STRIPE_V1:
                raise SignatureError(
                    "bad_signature",
                    f"Stripe-Signature carries more than {MAX_STRIPE_V1} v1 signatures",
                )
    if len(timestamps) != 1:
        raise SignatureError("bad_signature", "Stripe-Signature needs exactly one t=<seconds>")
    timestamp = parse_ascii_int(timestamps[0], maximum=_MAX_TIMESTAMP)
    if timestamp is None:
        raise SignatureError("bad_signature", "Stripe-Signature's t= is not epoch seconds")
    v1 = [signature for signature in v1 if signature]
    if not v1:
        raise SignatureError(
            "bad_signature", "Stripe-Signature carries no v1 signature (other schemes are refused)"
        )
    return timestamp, v1


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
    if not header or not header.strip(_OWS):
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
