"""Signature verification: the reference's vectors, cross-checked against the official SDKs
(`hubspot-api-client`, `stripe`), and every way a request must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string
import time
from typing import Any

import pytest
import stripe
from hubspot.utils.signature import Signature

from app.sources import signatures
from app.sources.signatures import (
    MAX_SIGNATURE_HEADER,
    MAX_STRIPE_V1,
    SignatureError,
    hubspot_legacy_signature,
    hubspot_uri,
    hubspot_v3_signature,
    hubspot_v3_uri,
    parse_stripe_header,
    stripe_signature,
    verify_hubspot,
    verify_stripe,
)

HS_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
HS_BODY = b"{'example_field':'example_value'}"
HS_URI = "https://www.example.com/webhook_uri"
STRIPE_SECRET = "whsec_test_secret"
STRIPE_BODY = b'{"id":"evt_test_webhook","object":"event"}'
STRIPE_HEADER = "t=1492774577,v1=88a022085c6bdb887b02cb26ff76dd681234d9675c0f22844059f55552a8883a"


def v3_headers(secret: str, uri: str, body: bytes, timestamp_ms: int) -> dict[str, str]:
    ts = str(timestamp_ms)
    return {
        "x-hubspot-signature-v3": hubspot_v3_signature(secret, "POST", uri, body, ts),
        "x-hubspot-request-timestamp": ts,
    }


def rand_text(rng: random.Random, n: int) -> str:
    return "".join(
        rng.choice(string.ascii_letters + string.digits + '{}[]":,é€ ') for _ in range(n)
    )


# HubSpot: vectors ---------
def test_hubspot_reference_vectors() -> None:
    assert (
        hubspot_legacy_signature(HS_SECRET, "v1", "POST", HS_URI, HS_BODY)
        == "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
    )
    assert (
        hubspot_legacy_signature(HS_SECRET, "v2", "POST", HS_URI, HS_BODY)
        == "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
    )
    assert (
        hubspot_v3_signature(HS_SECRET, "POST", HS_URI, HS_BODY, "1693657560000")
        == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
    )


def test_hubspot_reference_vector_v3_verifies_at_its_time() -> None:
    headers = {
        "x-hubspot-signature-v3": "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
        "x-hubspot-request-timestamp": "1693657560000",
    }
    now = 1693657560.0 + 60
    assert (
        verify_hubspot(
            secret=HS_SECRET, method="POST", uri=HS_URI, body=HS_BODY, headers=headers, now=now
        )
        == "v3"
    )


# HubSpot: cross-checked with the SDK ---------
@pytest.mark.parametrize("seed", range(20))
def test_hubspot_v3_matches_the_sdk(seed: int) -> None:
    rng = random.Random(seed)
    secret = rand_text(rng, 36)
    body = rand_text(rng, rng.randint(0, 300))
    uri = f"https://relay-{seed}.example.com/hooks/webhooks/hubspot?portal={seed}&x=a%20b"
    ts = str(int(time.time() * 1000) - rng.randint(0, 200_000))
    ours = hubspot_v3_signature(secret, "POST", uri, body.encode(), ts)
    # The SDK signs the URI as given; ours decodes only escapes this URI does not contain.
    assert Signature.is_valid(
        signature=ours,
        client_secret=secret,
        request_body=body,
        http_uri=uri,
        http_method="POST",
        signature_version="v3",
        timestamp=ts,
    )
    sdk = Signature.get_signature(secret, body, "v3", uri, "POST", ts)
    headers = {"x-hubspot-signature-v3": sdk, "x-hubspot-request-timestamp": ts}
    assert (
        verify_hubspot(
            secret=secret,
            method="POST",
            uri=uri,
            body=body.encode(),
            headers=headers,
            now=time.time(),
        )
        == "v3"
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("seed", range(5))
def test_hubspot_v1_v2_match_the_sdk(version: str, seed: int) -> None:
    rng = random.Random(seed)
    secret, body = rand_text(rng, 36), rand_text(rng, 200)
    uri = "https://relay.example.com/webhooks/hubspot"
    ours = hubspot_legacy_signature(secret, version, "POST", uri, body.encode())  # type: ignore[arg-type]
    assert Signature.is_valid(
        signature=ours,
        client_secret=secret,
        request_body=body,
        http_uri=uri,
        http_method="POST",
        signature_version=version,
    )
    headers = {"x-hubspot-signature": ours, "x-hubspot-signature-version": version}
    assert (
        verify_hubspot(
            secret=secret,
            method="POST",
            uri=uri,
            body=body.encode(),
            headers=headers,
            now=0,
            accept_legacy=True,
        )
        == version
    )


def test_hubspot_v3_uri_decodes_exactly_the_twelve_escapes() -> None:
    decoded = {
        "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
        "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
    }  # fmt: skip
    for escape, char in decoded.items():
        assert hubspot_v3_uri(f"https://h.example/p?q={escape}") == f"https://h.example/p?q={char}"
        assert hubspot_v3_uri(f"https://h.example/p?q={escape.lower()}") == (
            f"https://h.example/p?q={char}"
        )
    for kept in ("%20", "%2B", "%3D", "%26", "%25", "%23", "%5B", "%7E", "%22"):
        assert hubspot_v3_uri(f"https://h.example/p?q={kept}") == f"https://h.example/p?q={kept}"
    # One pass: an escaped percent sign stays escaped.
    assert hubspot_v3_uri("https://h.example/p?q=%253A") == "https://h.example/p?q=%253A"


def test_hubspot_v3_signs_the_decoded_uri_as_the_sdk_does_with_it() -> None:
    raw = "https://relay.example.com/webhooks/hubspot?redirect=https%3A%2F%2Fx.example%2Fa%20b"
    decoded = "https://relay.example.com/webhooks/hubspot?redirect=https://x.example/a%20b"
    ts = str(int(time.time() * 1000))
    sdk = Signature.get_signature(HS_SECRET, "[]", "v3", decoded, "POST", ts)
    assert hubspot_v3_signature(HS_SECRET, "POST", raw, b"[]", ts) == sdk


def test_hubspot_uri_keeps_the_prefix_and_the_query_as_received() -> None:
    assert hubspot_uri("https://x.example/relay", "/webhooks/hubspot", "") == (
        "https://x.example/relay/webhooks/hubspot"
    )
    assert hubspot_uri("https://x.example/", "/webhooks/hubspot", "a=1&b=%3A") == (
        "https://x.example/webhooks/hubspot?a=1&b=%3A"
    )


# HubSpot: refusals ---------
def _verify_hs(
    headers: dict[str, str],
    *,
    body: bytes = b"[]",
    now: float | None = None,
    accept_legacy: bool = False,
) -> str:
    return verify_hubspot(
        secret=HS_SECRET,
        method="POST",
        uri=HS_URI,
        body=body,
        headers=headers,
        now=time.time() if now is None else now,
        accept_legacy=accept_legacy,
    )


def _reason(call: object) -> str:
    with pytest.raises(SignatureError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_hubspot_refusals() -> None:
    now_ms = int(time.time() * 1000)
    good = v3_headers(HS_SECRET, HS_URI, b"[]", now_ms)
    assert _verify_hs(good) == "v3"
    forged = v3_headers("another-secret", HS_URI, b"[]", now_ms)
    assert _reason(lambda: _verify_hs(forged)) == "bad_signature"
    assert _reason(lambda: _verify_hs(good, body=b"[{}]")) == "bad_signature"
    other_uri = v3_headers(HS_SECRET, "https://evil.example/webhook_uri", b"[]", now_ms)
    assert _reason(lambda: _verify_hs(other_uri)) == "bad_signature"
    stale = v3_headers(HS_SECRET, HS_URI, b"[]", now_ms - 301_000)
    assert _reason(lambda: _verify_hs(stale)) == "stale_timestamp"
    future = v3_headers(HS_SECRET, HS_URI, b"[]", now_ms + 301_000)
    assert _reason(lambda: _verify_hs(future)) == "stale_timestamp"
    assert _verify_hs(v3_headers(HS_SECRET, HS_URI, b"[]", now_ms - 290_000)) == "v3"
    assert _verify_hs(v3_headers(HS_SECRET, HS_URI, b"[]", now_ms + 290_000)) == "v3"
    # A captured request replayed later: its signature still matches, its timestamp does not.
    assert _reason(lambda: _verify_hs(good, now=time.time() + 600)) == "stale_timestamp"
    no_ts = {"x-hubspot-signature-v3": good["x-hubspot-signature-v3"]}
    assert _reason(lambda: _verify_hs(no_ts)) == "missing_signature"
    bad_ts = {**good, "x-hubspot-request-timestamp": "yesterday"}
    assert _reason(lambda: _verify_hs(bad_ts)) == "bad_signature"
    assert _reason(lambda: _verify_hs({})) == "missing_signature"
    assert _reason(lambda: _verify_hs({"x-hubspot-signature": "ab"})) == "legacy_signature"
    legacy_on = {"x-hubspot-signature": "ab"}
    assert _reason(lambda: _verify_hs(legacy_on, accept_legacy=True)) == "bad_signature"


def test_hubspot_a_failed_v3_never_falls_back_to_v1() -> None:
    v1 = hubspot_legacy_signature(HS_SECRET, "v1", "POST", HS_URI, b"[]")
    headers = {
        "x-hubspot-signature": v1,
        "x-hubspot-signature-version": "v1",
        "x-hubspot-signature-v3": "AAAA",
        "x-hubspot-request-timestamp": str(int(time.time() * 1000)),
    }
    assert _reason(lambda: _verify_hs(headers)) == "bad_signature"
    assert _reason(lambda: _verify_hs(headers, accept_legacy=True)) == "bad_signature"
    del headers["x-hubspot-signature-v3"], headers["x-hubspot-request-timestamp"]
    assert _verify_hs(headers, accept_legacy=True) == "v1"
    headers["x-hubspot-signature-version"] = "v4"
    assert _reason(lambda: _verify_hs(headers, accept_legacy=True)) == "bad_signature"


# HubSpot: v1/v2 are replayable, so they are refused unless the operator opts in ---------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_hubspot_legacy_signatures_are_refused_unless_enabled(version: str) -> None:
    signature = hubspot_legacy_signature(HS_SECRET, version, "POST", HS_URI, b"[]")  # type: ignore[arg-type]
    headers = {"x-hubspot-signature": signature, "x-hubspot-signature-version": version}
    # A request captured a year ago verifies exactly as well as a fresh one: no timestamp.
    a_year_later = time.time() + 365 * 86400
    with pytest.raises(SignatureError) as info:
        _verify_hs(headers, now=a_year_later)
    assert info.value.reason == "legacy_signature"
    assert "v3 is required" in info.value.message
    assert "HUBSPOT_ACCEPT_LEGACY_SIGNATURES=true" in info.value.message
    assert _verify_hs(headers, now=a_year_later, accept_legacy=True) == version


# HubSpot: malformed headers are a SignatureError, never another exception ---------
@pytest.mark.parametrize(
    "timestamp",
    [
        "\xb2",  # superscript two: str.isdigit() says yes, int() says no
        "1693657560000\xb2",
        "\u0663\u0664",  # Arabic-Indic digits: int() would take them
        "+1693657560000",
        "-1",
        "1_000",
        "1e12",
        " ",
        "1" * 17,
        "9" * 5000,
        "\xa01693657560000",  # a latin-1 no-break space, which str.strip() would remove
    ],
)
def test_hubspot_malformed_timestamps_are_refused_as_bad_signatures(timestamp: str) -> None:
    headers = {"x-hubspot-signature-v3": "AAAA", "x-hubspot-request-timestamp": timestamp}
    reason = _reason(lambda: _verify_hs(headers))
    assert reason == ("missing_signature" if not timestamp.strip() else "bad_signature")


@pytest.mark.parametrize(
    "name",
    [
        "x-hubspot-signature-v3",
        "x-hubspot-request-timestamp",
        "x-hubspot-signature",
        "x-hubspot-signature-version",
    ],
)
def test_hubspot_oversized_headers_are_refused_before_any_digest(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests: list[str] = []

    def spy(name: str) -> Any:
        def digest(*args: object) -> str:
            digests.append(name)
            return ""

        return digest

    monkeypatch.setattr(signatures, "hubspot_v3_signature", spy("v3"))
    monkeypatch.setattr(signatures, "hubspot_legacy_signature", spy("legacy"))
    now_ms = str(int(time.time() * 1000))
    base = (
        {"x-hubspot-signature-v3": "AAAA", "x-hubspot-request-timestamp": now_ms}
        if "v3" in name or "timestamp" in name
        else {"x-hubspot-signature": "ab", "x-hubspot-signature-version": "v1"}
    )
    headers = {**base, name: "1" * (MAX_SIGNATURE_HEADER + 1)}
    with pytest.raises(SignatureError) as info:
        _verify_hs(headers, accept_legacy=True)
    assert info.value.reason == "bad_signature"
    assert f"longer than {MAX_SIGNATURE_HEADER}" in info.value.message
    assert digests == []


# Stripe: vector and SDK ---------
def test_stripe_reference_vector() -> None:
    assert stripe_signature(STRIPE_SECRET, 1492774577, STRIPE_BODY) == (
        "88a022085c6bdb887b02cb26ff76dd681234d9675c0f22844059f55552a8883a"
    )
    assert (
        verify_stripe(
            secrets=[STRIPE_SECRET],
            header=STRIPE_HEADER,
            body=STRIPE_BODY,
            tolerance=300,
            now=1492774577 + 10,
        )
        == 1492774577
    )
    # The SDK agrees (its timestamp check off, as the reference says).
    assert stripe.WebhookSignature.verify_header(STRIPE_BODY, STRIPE_HEADER, STRIPE_SECRET, 0)


@pytest.mark.parametrize("seed", range(20))
def test_stripe_matches_the_sdk(seed: int) -> None:
    rng = random.Random(seed)
    secret = "whsec_" + rand_text(rng, 32)
    body = json.dumps({"id": f"evt_{seed}", "object": "event", "x": rand_text(rng, 100)}).encode()
    now = int(time.time())
    ours = f"t={now},v1={stripe_signature(secret, now, body)}"
    event = stripe.Webhook.construct_event(body, ours, secret)
    assert event["id"] == f"evt_{seed}"
    sdk = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, now)
    assert verify_stripe(secrets=[secret], header=sdk, body=body, tolerance=300, now=now) == now


def _stripe(header: str | None, *, now: float, secrets: tuple[str, ...] = (STRIPE_SECRET,)) -> int:
    return verify_stripe(
        secrets=list(secrets), header=header, body=STRIPE_BODY, tolerance=300, now=now
    )


def test_stripe_any_v1_may_match_and_any_secret() -> None:
    t = 1492774577
    good = stripe_signature(STRIPE_SECRET, t, STRIPE_BODY)
    header = f"t={t},v1={'0' * 64},v1={good},v0={'1' * 64}"
    assert _stripe(header, now=t) == t
    rolled = ("whsec_new_secret", STRIPE_SECRET)
    assert _stripe(f"t={t},v1={good}", now=t, secrets=rolled) == t
    new = stripe_signature("whsec_new_secret", t, STRIPE_BODY)
    assert _stripe(f"t={t},v1={new}", now=t, secrets=rolled) == t
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(STRIPE_BODY, f"t={t},v1={new}", STRIPE_SECRET, 0)


def test_stripe_refusals() -> None:
    t = 1492774577
    good = stripe_signature(STRIPE_SECRET, t, STRIPE_BODY)
    forged = stripe_signature("whsec_other", t, STRIPE_BODY)
    assert _reason(lambda: _stripe(f"t={t},v1={forged}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe(f"t={t + 1},v1={good}", now=t)) == "bad_signature"
    # v0 is a fake signature on test events: even a "correct" one is not accepted.
    assert _reason(lambda: _stripe(f"t={t},v0={good}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe(f"t={t},v2={good}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe(f"t={t},v1={good}", now=t + 301)) == "stale_timestamp"
    assert _reason(lambda: _stripe(f"t={t},v1={good}", now=t - 301)) == "stale_timestamp"
    assert _stripe(f"t={t},v1={good}", now=t + 299) == t
    assert _stripe(f"t={t},v1={good}", now=t - 299) == t
    assert _reason(lambda: _stripe(None, now=t)) == "missing_signature"
    assert _reason(lambda: _stripe("", now=t)) == "missing_signature"
    assert _reason(lambda: _stripe(f"v1={good}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe(f"t={t},t={t},v1={good}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe(f"t=soon,v1={good}", now=t)) == "bad_signature"
    assert _reason(lambda: _stripe("garbage", now=t)) == "bad_signature"
    with pytest.raises(ValueError, match="tolerance"):
        verify_stripe(
            secrets=[STRIPE_SECRET],
            header=f"t={t},v1={good}",
            body=STRIPE_BODY,
            tolerance=0,
            now=t,
        )


def test_stripe_header_parsing() -> None:
    assert parse_stripe_header("t=5, v1=ab ,v0=cd,v1=ef") == (5, ["ab", "ef"])
    assert parse_stripe_header("t=0005,v1=ab,v1=") == (5, ["ab"])


@pytest.mark.parametrize(
    "header",
    [
        "t=\xb2,v1=00",  # the reported 500: str.isdigit() accepts it, int() refuses
        "t=1492774577\xb2,v1=00",
        "t=\u0661\u0662,v1=00",  # Arabic-Indic digits, which int() would accept
        "t=,v1=00",
        "t= ,v1=00",
        "t=-1,v1=00",
        "t=+1492774577,v1=00",
        "t=1_492_774_577,v1=00",
        "t=1e9,v1=00",
        "t=" + "9" * 17 + ",v1=00",
        "t=" + "9" * 4000 + ",v1=00",
        "t=1492774577,v1=",
        "t=1492774577,v1",
        "t=1492774577",
        ",,,=,==,t==1",
        "t=1492774577,v1=\xff\xfe",
        "\x00",
        "=",
    ],
)
def test_stripe_malformed_headers_are_refused_as_bad_signatures(header: str) -> None:
    assert _reason(lambda: _stripe(header, now=1492774577)) == "bad_signature"


def _count_hmacs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = signatures.stripe_signature

    def counting(secret: str, timestamp: int, body: bytes) -> str:
        calls.append(timestamp)
        return real(secret, timestamp, body)

    monkeypatch.setattr(signatures, "stripe_signature", counting)
    return calls


def test_stripe_a_huge_header_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reported attack: 8 MB of 1.3 million v1 entries blocked the event loop for 1.3 s.
    hmacs = _count_hmacs(monkeypatch)
    t = 1492774577
    good = stripe_signature(STRIPE_SECRET, t, STRIPE_BODY)
    huge = f"t={t}," + ",".join([f"v1={'0' * 1}"] * 1_300_000) + f",v1={good}"
    assert len(huge) > 5_000_000
    splits: list[str] = []

    class Spy(str):
        def split(self, *args: object, **kwargs: object) -> list[str]:
            splits.append("split")
            return super().split(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(SignatureError) as info:
        _stripe(Spy(huge), now=t)
    assert info.value.reason == "bad_signature"
    assert f"longer than {MAX_SIGNATURE_HEADER}" in info.value.message
    assert splits == []  # refused on its length alone, never split
    assert hmacs == []
    # Just over the cap is refused the same way; at the cap a real header still verifies.
    padded = f"t={t},v1={good},v0=" + "0" * (MAX_SIGNATURE_HEADER - len(f"t={t},v1={good},v0="))
    assert len(padded) == MAX_SIGNATURE_HEADER
    assert _stripe(padded, now=t) == t
    assert _reason(lambda: _stripe(padded + "0", now=t)) == "bad_signature"


def test_stripe_more_v1_entries_than_the_cap_are_refused_without_any_hmac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hmacs = _count_hmacs(monkeypatch)
    t = 1492774577
    good = stripe_signature(STRIPE_SECRET, t, STRIPE_BODY)
    hmacs.clear()
    many = f"t={t}," + ",".join(["v1=00"] * MAX_STRIPE_V1) + f",v1={good}"
    assert len(many) < MAX_SIGNATURE_HEADER
    with pytest.raises(SignatureError) as info:
        _stripe(many, now=t)
    assert info.value.reason == "bad_signature"
    assert f"more than {MAX_STRIPE_V1} v1" in info.value.message
    assert hmacs == []
    at_cap = f"t={t}," + ",".join(["v1=00"] * (MAX_STRIPE_V1 - 1)) + f",v1={good}"
    assert _stripe(at_cap, now=t, secrets=("whsec_other", STRIPE_SECRET)) == t
    assert len(hmacs) == 2  # one per secret, whatever the number of v1 entries


@pytest.mark.parametrize("seed", range(200))
def test_random_headers_only_ever_raise_signature_errors(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "t=v1,0123456789abcdef \t\xb2\xa0\x85\u0663\x00\xff=,"
    header = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
    for call in (
        lambda: _stripe(header, now=1492774577),
        lambda: _verify_hs(
            {"x-hubspot-signature-v3": header, "x-hubspot-request-timestamp": header[:20]}
        ),
        lambda: _verify_hs(
            {"x-hubspot-signature": header, "x-hubspot-signature-version": header[:3]},
            accept_legacy=True,
        ),
    ):
        try:
            call()
        except SignatureError as exc:
            assert exc.reason in ("missing_signature", "bad_signature", "stale_timestamp")


def test_signatures_are_computed_over_raw_bytes() -> None:
    # Re-serialised JSON would differ in whitespace: the raw bytes must be what is signed.
    body = b'{ "id" : "evt_1" }'
    t = 1700000000
    mac = hmac.new(STRIPE_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert stripe_signature(STRIPE_SECRET, t, body) == mac
    digest = hmac.new(HS_SECRET.encode(), b"POST" + HS_URI.encode() + body + b"1", hashlib.sha256)
    assert hubspot_v3_signature(HS_SECRET, "POST", HS_URI, body, "1") == (
        base64.b64encode(digest.digest()).decode()
    )
