"""Pure logic of the webhook sources: mapping files, type conversions, HubSpot batches,
Stripe customers and subscriptions (MRR, plan, dates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.config import Settings
from app.sources.common import Malformed
from app.sources.hubspot.events import parse_batch, plan_batch
from app.sources.mapping import (
    ConversionError,
    MappingError,
    apply,
    convert,
    flatten,
    load_mapping,
    sourced_properties,
)
from app.sources.stripe.events import (
    StripeEvent,
    company_from_customer,
    company_id_refusal,
    parse_event,
)
from app.sources.stripe.processor import StripeProcessor
from app.sources.stripe.revenue import (
    UnknownAmount,
    monthly_recurring_revenue,
    plan_name,
    subscription_record,
)

# conversions ---------
MAY_1_NOON = 1714564800  # 2024-05-01T12:00:00Z


def test_numbers_convert_from_hubspot_strings_and_nothing_is_guessed() -> None:
    assert convert("42", "number", epoch="ms") == 42
    assert convert(" -7 ", "number", epoch="ms") == -7
    assert convert("4.5", "number", epoch="ms") == 4.5
    assert convert("1e3", "number", epoch="ms") == 1000.0
    assert convert(12, "number", epoch="s") == 12
    for bad in ("abc", "1,000", "12 employees", "NaN", "inf", "", True):
        with pytest.raises(ConversionError):
            convert(bad, "number", epoch="ms")


def test_booleans_and_strings() -> None:
    assert convert("true", "boolean", epoch="ms") is True
    assert convert("FALSE", "boolean", epoch="ms") is False
    assert convert(False, "boolean", epoch="s") is False
    for bad in ("yes", "1", 1, "on"):
        with pytest.raises(ConversionError):
            convert(bad, "boolean", epoch="ms")
    assert convert("Acme", "string", epoch="ms") == "Acme"
    assert convert(12, "string", epoch="s") == "12"
    assert convert(True, "string", epoch="s") == "true"


def test_dates_become_iso_8601_from_epoch_ms_or_s() -> None:
    assert convert(str(MAY_1_NOON * 1000), "date", epoch="ms") == "2024-05-01T12:00:00Z"
    assert convert(str(MAY_1_NOON * 1000 + 250), "date", epoch="ms") == ("2024-05-01T12:00:00.250Z")
    assert convert(MAY_1_NOON, "date", epoch="s") == "2024-05-01T12:00:00Z"
    assert convert("2024-05-01", "date", epoch="ms") == "2024-05-01T00:00:00Z"
    assert convert("2024-05-01T14:00:00+02:00", "date", epoch="ms") == "2024-05-01T12:00:00Z"
    for bad in ("next tuesday", "99999999999999999", True, "2024-13-01"):
        with pytest.raises(ConversionError):
            convert(bad, "date", epoch="ms")


@pytest.mark.parametrize("kind", ["number", "date"])
@pytest.mark.parametrize(
    "value",
    [
        "1" * 5000,  # int() refuses more than 4,300 digits: it was a 500 for the whole batch
        "-" + "9" * 4301,
        "1" * 21,
        "1e999999",  # float() says inf
        "-1e999999",
        "1" * 400 + ".5",
        "\u0661\u0662",  # Arabic-Indic digits: int() and float() would take them
        "\uff11\uff12",  # full-width digits
        "\xb2",
        "1" * 1_000_000 + "x",
    ],
)
def test_huge_and_foreign_numbers_do_not_convert(value: str, kind: str) -> None:
    with pytest.raises(ConversionError):
        convert(value, kind, epoch="ms")  # type: ignore[arg-type]


def test_integers_with_leading_zeros_and_dates_at_the_edges() -> None:
    # The same rules as the property schema (app/domain/values.py): signed 64-bit integers,
    # at most 4,300 digits (int() refuses more), leading zeros allowed within that.
    assert convert("0" * 4000 + "42", "number", epoch="ms") == 42
    assert convert("+9223372036854775807", "number", epoch="ms") == 2**63 - 1
    assert convert("-9223372036854775808", "number", epoch="ms") == -(2**63)
    for refused in ("0" * 5000 + "42", "9223372036854775808", "18446744073709551616"):
        with pytest.raises(ConversionError):
            convert(refused, "number", epoch="ms")
    # Valid ISO dates whose UTC instant is out of datetime's range raised OverflowError.
    for edge in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        with pytest.raises(ConversionError):
            convert(edge, "date", epoch="ms")
    for huge in (2**63, -(2**63), 10.0**300):
        with pytest.raises(ConversionError):
            convert(huge, "date", epoch="ms")


def test_null_stays_null_whatever_the_type() -> None:
    for kind in ("string", "number", "boolean", "date"):
        assert convert(None, kind, epoch="ms") is None  # type: ignore[arg-type]


# mapping files ---------
def test_default_mappings_load_and_cover_the_usual_fields() -> None:
    hubspot = load_mapping("hubspot").section("company")
    assert {"name", "domain", "industry", "numberofemployees", "annualrevenue"} <= set(hubspot)
    assert hubspot["numberofemployees"].type == "number"
    assert hubspot["createdate"].type == "date"
    stripe = load_mapping("stripe")
    assert stripe.section("subscription")["mrr"].type == "number"
    assert {"plan", "status", "current_period_end", "trial_end"} <= set(
        stripe.section("subscription")
    )
    # Personal data is not forwarded unless someone maps it.
    # Personal data stays out; the customer's name is the company's name in B2B (as HubSpot's).
    assert not {"email", "phone", "address.line1"} & set(stripe.section("customer"))
    assert stripe.section("customer")["name"].property == "name"


def _write(tmp_path: Path, content: Any) -> str:
    path = tmp_path / "mapping.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_bad_mapping_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    cases = {
        "not json": "{",
        "an array": [],
        "unknown section": {"contact": {}},
        "bad type": {"company": {"name": {"property": "name", "type": "text"}}},
        "no property": {"company": {"name": {"type": "string"}}},
        "unknown key": {"company": {"name": {"property": "n", "kind": "string"}}},
        "twice": {"company": {"a": {"property": "x"}, "b": {"property": "x"}}},
        "control character": {"company": {"name": {"property": "na\u0000me"}}},
        "tab": {"company": {"name": {"property": "na\tme"}}},
    }
    for label, content in cases.items():
        path = _write(tmp_path, content)
        with pytest.raises(MappingError) as info:
            load_mapping("hubspot", path)
        assert str(path) in str(info.value), label  # the message names the file
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping("hubspot", tmp_path / "missing.json")
    custom = load_mapping(
        "hubspot", _write(tmp_path, {"_comment": "x", "company": {"tier": {"property": "tier"}}})
    )
    assert custom.section("company")["tier"].type == "string"


def test_settings_refuse_a_bad_mapping_file_and_a_zero_tolerance(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "userpilot_api_key": "k",
        "relay_api_keys": "a:ingest:key",
        "_env_file": None,
    }
    with pytest.raises(ValueError, match="mapping file"):
        Settings(**base, hubspot_mapping_file=_write(tmp_path, "{"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(**base, stripe_webhook_tolerance_seconds=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RELAY_PUBLIC_URL"):
        Settings(**base, hubspot_client_secret="s")  # type: ignore[arg-type]
    settings = Settings(**base, stripe_webhook_secret=" whsec_a , whsec_b ")  # type: ignore[arg-type]
    assert [s.get_secret_value() for s in settings.stripe_webhook_secrets] == ["whsec_a", "whsec_b"]
    assert "whsec_a" not in repr(settings)
    assert Settings(**base, stripe_webhook_secret="").stripe_webhook_secrets == ()  # type: ignore[arg-type]


def test_apply_counts_unmapped_fields_and_reports_invalid_values() -> None:
    rules = load_mapping("hubspot").section("company")
    mapped = apply(
        rules,
        {"name": "Acme", "numberofemployees": "many", "notes": "secret", "gone": None},
        epoch="ms",
    )
    assert mapped.metadata == {"name": "Acme"}
    assert mapped.invalid == ["numberofemployees"]
    assert mapped.unmapped == 1


def test_flatten() -> None:
    assert flatten({"a": 1, "b": {"c": "x", "d": [1]}, "e": None, "f": 1.5}) == {
        "a": 1,
        "b.c": "x",
        "e": None,
        "f": 1.5,
    }


# HubSpot ---------
def hs_event(**fields: Any) -> dict[str, Any]:
    event = {
        "eventId": 100,
        "subscriptionId": 7,
        "portalId": 33,
        "appId": 1,
        "occurredAt": MAY_1_NOON * 1000,
        "subscriptionType": "company.propertyChange",
        "attemptNumber": 0,
        "objectId": 501,
        "changeSource": "CRM_UI",
        "propertyName": "name",
        "propertyValue": "Acme",
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not ...}


def test_hubspot_batch_becomes_updates() -> None:
    rules = load_mapping("hubspot").section("company")
    batch = [
        hs_event(subscriptionType="company.creation", propertyName=..., propertyValue=...),
        hs_event(eventId=101),
        hs_event(eventId=102, propertyName="numberofemployees", propertyValue="42"),
        hs_event(eventId=103, propertyName="domain", propertyValue=""),
        hs_event(eventId=104, propertyName="hs_notes_secret", propertyValue="x"),
        hs_event(eventId=105, propertyName="annualrevenue", propertyValue="lots"),
        hs_event(eventId=106, subscriptionType="company.deletion", propertyName=...),
        hs_event(eventId=107, subscriptionType=..., eventType="company.propertyChange"),
    ]
    plans = plan_batch(parse_batch(orjson.dumps(batch)), rules, "hs-")
    outcomes = [p.outcome for p in plans]
    assert outcomes == [
        "forwarded",
        "forwarded",
        "forwarded",
        "forwarded",
        "unmapped",
        "invalid_value",
        "ignored",
        "forwarded",
    ]
    updates = [p.update for p in plans]
    assert updates[0] is not None and updates[0].metadata == {}
    assert updates[0].company_id == "hs-501"
    assert updates[1] is not None and updates[1].metadata == {"name": "Acme"}
    assert updates[1].event_key == f"33:7:101:501:{MAY_1_NOON * 1000}"
    assert updates[1].property_times == {"name": MAY_1_NOON}
    assert updates[1].skip_if_empty
    assert updates[2] is not None and updates[2].metadata == {"employees": 42}
    assert updates[3] is not None and updates[3].metadata == {"domain": None}
    assert updates[4] is None and plans[4].unmapped == 1
    assert updates[5] is None and plans[5].invalid_fields == ["annualrevenue"]
    assert updates[6] is None
    assert updates[7] is not None and updates[7].metadata == {"name": "Acme"}


def test_hubspot_association_events_need_no_object_id() -> None:
    association = {
        "eventId": 1,
        "subscriptionId": 2,
        "portalId": 3,
        "occurredAt": 4,
        "subscriptionType": "company.associationChange",
        "fromObjectId": 5,
        "toObjectId": 6,
    }
    [plan] = plan_batch(parse_batch(orjson.dumps([association])), {}, "")
    assert plan.outcome == "ignored"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"not json", None),
        (b'{"eventId": 1}', None),
        (orjson.dumps([hs_event()] * 101), None),
        (orjson.dumps([hs_event(), hs_event(objectId=...)]), "[1]"),
        (orjson.dumps([hs_event(propertyValue=...)]), "[0]"),
        (orjson.dumps([hs_event(subscriptionType=...)]), "[0]"),
        (orjson.dumps([hs_event(eventId=...)]), "[0].eventId"),
        (orjson.dumps([hs_event(occurredAt="soon")]), "[0].occurredAt"),
        (orjson.dumps(["x"]), "[0]"),
    ],
)
def test_hubspot_malformed_batches(body: bytes, where: str | None) -> None:
    with pytest.raises(Malformed) as info:
        parse_batch(body)
    if where is not None:
        assert info.value.errors[0][0] == where


def test_hubspot_unusable_events_are_skipped_one_by_one() -> None:
    rules = load_mapping("hubspot").section("company")
    good = hs_event(eventId=1, objectId=501)
    bad_objects: list[Any] = [
        True,  # a bool is an int to Python: it became company "hs-1"
        False,
        1.0,
        1.5,
        -5,
        "",
        " ",
        "abc",
        "12a",
        "\u0661\u0662",
        "1" * 300,  # over 255 characters with the prefix
        "12\u0000",
        {"id": 1},
        [1],
    ]
    bad = [hs_event(eventId=10 + i, objectId=o) for i, o in enumerate(bad_objects)]
    bad += [
        hs_event(eventId="e\u0000", objectId=7),
        hs_event(portalId="p" * 65, objectId=7),
        hs_event(subscriptionId="", objectId=7),
        hs_event(eventId=90, objectId=7, propertyName="na\u0000me"),
        hs_event(eventId=91, objectId=7, propertyName="name\r\n"),
        hs_event(eventId=92, objectId=7, propertyName=""),
        hs_event(eventId=93, objectId=True, subscriptionType="company.creation"),
    ]
    huge = hs_event(
        eventId=2, objectId=501, propertyName="numberofemployees", propertyValue="9" * 5000
    )
    batch = [good, *bad, huge, hs_event(eventId=3, objectId="0042")]
    plans = plan_batch(parse_batch(orjson.dumps(batch)), rules, "hs-")
    outcomes = [p.outcome for p in plans]
    assert outcomes == ["forwarded", *["invalid_event"] * len(bad), "invalid_value", "forwarded"]
    assert [p.update for p in plans[1 : 1 + len(bad)]] == [None] * len(bad)
    assert all(p.problem for p in plans[1 : 1 + len(bad)])
    assert plans[1].problem is not None and "objectId" in plans[1].problem
    assert plans[-2].invalid_fields == ["numberofemployees"] and plans[-2].update is None
    stored = [p.update for p in plans if p.update is not None]
    assert [u.company_id for u in stored] == ["hs-501", "hs-0042"]
    # Nothing that reaches the store holds a control character, whatever the batch held.
    for plan in plans:
        assert "\u0000" not in plan.event_id + plan.event_type
    # Without a prefix a 255-digit objectId is a usable id, 256 digits are not.
    [ok, too_long] = plan_batch(
        parse_batch(orjson.dumps([hs_event(objectId="1" * 255), hs_event(objectId="1" * 256)])),
        rules,
        "",
    )
    assert ok.outcome == "forwarded" and too_long.outcome == "invalid_event"


@pytest.mark.parametrize(
    "event",
    [
        hs_event(eventId=True),
        hs_event(portalId=1.5),
        hs_event(occurredAt=True),
        hs_event(occurredAt=1.5),
        hs_event(occurredAt="1714564800000"),
        hs_event(objectId=None),
        hs_event(subscriptionType=5),
        hs_event(propertyName=5),
    ],
)
def test_hubspot_events_not_of_the_documented_shape_still_refuse_the_batch(
    event: dict[str, Any],
) -> None:
    with pytest.raises(Malformed) as info:
        parse_batch(orjson.dumps([hs_event(), event]))
    assert info.value.errors[0][0].startswith("[1]")


# Stripe ---------
def price(amount: int | None, interval: str = "month", **extra: Any) -> dict[str, Any]:
    return {
        "id": "price_1",
        "object": "price",
        "nickname": "Pro",
        "currency": "usd",
        "unit_amount": amount,
        "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"},
        **extra,
    }


def subscription(*items: dict[str, Any], status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": status,
        "currency": "usd",
        "current_period_end": MAY_1_NOON,
        "trial_end": None,
        "items": {"object": "list", "data": list(items)},
        **extra,
    }


def test_mrr_is_normalised_to_a_month_in_major_units() -> None:
    assert monthly_recurring_revenue(subscription({"price": price(4900), "quantity": 1})) == 49.0
    assert monthly_recurring_revenue(subscription({"price": price(2000), "quantity": 3})) == 60.0
    yearly = {"price": price(120000, "year"), "quantity": 1}
    assert monthly_recurring_revenue(subscription(yearly)) == 100.0
    weekly = {"price": price(1000, "week"), "quantity": 1}
    assert monthly_recurring_revenue(subscription(weekly)) == 43.33
    quarterly_price = price(30000)
    quarterly_price["recurring"]["interval_count"] = 3
    quarterly = {"price": quarterly_price, "quantity": 1}
    assert monthly_recurring_revenue(subscription(quarterly)) == 100.0
    both = subscription({"price": price(4900), "quantity": 1}, yearly)
    assert monthly_recurring_revenue(both) == 149.0
    yen = subscription({"price": price(5000, currency="jpy"), "quantity": 1}, currency="jpy")
    assert monthly_recurring_revenue(yen) == 5000.0
    decimal = {"price": price(None, unit_amount_decimal="1250.5"), "quantity": 2}
    assert monthly_recurring_revenue(subscription(decimal)) == 25.01
    assert monthly_recurring_revenue(subscription({"price": price(4900)}, status="past_due")) == 49


@pytest.mark.parametrize("status", ["trialing", "canceled", "incomplete", "unpaid", "paused"])
def test_no_revenue_outside_active_and_past_due(status: str) -> None:
    assert monthly_recurring_revenue(subscription({"price": price(4900)}, status=status)) == 0


def test_unknown_amounts_are_not_guessed() -> None:
    with pytest.raises(UnknownAmount):
        monthly_recurring_revenue(subscription({"price": price(None), "quantity": 1}))
    metered = price(10)
    metered["recurring"]["usage_type"] = "metered"
    with pytest.raises(UnknownAmount):
        monthly_recurring_revenue(subscription({"price": metered}))


@pytest.mark.parametrize(
    "item",
    [
        {"price": price(None, unit_amount_decimal="1e999999")},  # was a 500 (Decimal overflow)
        {"price": price(None, unit_amount_decimal="-1e999999")},
        {"price": price(None, unit_amount_decimal="1" * 5000)},
        {"price": price(None, unit_amount_decimal="NaN")},
        {"price": price(None, unit_amount_decimal="Infinity")},
        {"price": price(None, unit_amount_decimal="1e15")},
        {"price": price(None, unit_amount_decimal="\u0661\u0662")},
        {"price": price(None, unit_amount_decimal=["1"])},
        {"price": price(10.0**300)},  # type: ignore[arg-type]
        {"price": price(True)},
        {"price": price(10**14), "quantity": 2**63},  # beyond Decimal's 28 digits once rounded
        {"price": price(4900), "quantity": True},
        {"price": price(4900, recurring={"interval": "month", "interval_count": True})},
    ],
)
def test_amounts_no_real_price_has_are_unknown_not_errors(item: dict[str, Any]) -> None:
    with pytest.raises(UnknownAmount):
        monthly_recurring_revenue(subscription(item))


def test_a_huge_amount_drops_mrr_and_forwards_the_rest() -> None:
    sub = subscription({"price": price(None, unit_amount_decimal="1e999999"), "quantity": 1})
    plan = processor().plan_subscription(stripe_event("customer.subscription.updated", sub), "a")
    assert plan.outcome == "invalid_value" and plan.invalid_fields == ["mrr"]
    assert plan.update is not None and "mrr" not in plan.update.metadata
    assert plan.update.metadata["plan"] == "Pro"
    # A small decimal amount is still exact.
    small = {"price": price(None, unit_amount_decimal="0.5"), "quantity": 3}
    assert monthly_recurring_revenue(subscription(small)) == 0.02


def test_plan_names_and_period_end_from_items() -> None:
    assert plan_name(subscription({"price": price(1)})) == "Pro"
    assert plan_name(subscription({"price": price(1, nickname=None, lookup_key="pro_m")})) == (
        "pro_m"
    )
    two = subscription({"price": price(1)}, {"price": price(1, nickname="Seats", id="p2")})
    assert plan_name(two) == "Pro, Seats"
    assert plan_name(subscription()) is None
    newer_api = subscription(
        {"price": price(1), "current_period_end": MAY_1_NOON + 10},
        {"price": price(1), "current_period_end": MAY_1_NOON + 20},
        current_period_end=None,
    )
    record, unknown = subscription_record(newer_api)
    assert record["current_period_end"] == MAY_1_NOON + 20
    assert unknown == []


def test_company_from_customer() -> None:
    customer = {"id": "cus_1", "metadata": {"company_id": " acme "}}
    assert company_from_customer(customer, key="company_id", missing="skip") == "acme"
    bare = {"id": "cus_1", "metadata": {}}
    assert company_from_customer(bare, key="company_id", missing="customer_id") == "cus_1"
    assert company_from_customer(bare, key="company_id", missing="skip") is None
    blank = {"id": "cus_1", "metadata": {"company_id": ""}}
    assert company_from_customer(blank, key="company_id", missing="skip") is None
    assert company_id_refusal(blank, key="company_id") is None


@pytest.mark.parametrize("company_id", ["ac\u0000me", "ac\tme", "\u0007", "a" * 256])
def test_an_unusable_company_id_in_customer_metadata_is_refused_not_replaced(
    company_id: str,
) -> None:
    customer = {"id": "cus_1", "metadata": {"company_id": company_id}}
    for missing in ("skip", "customer_id"):
        assert company_from_customer(customer, key="company_id", missing=missing) is None
    assert company_id_refusal(customer, key="company_id") is not None
    assert company_id_refusal({"id": "cus_1"}, key="company_id") is None


def stripe_event(kind: str, obj: dict[str, Any], **data: Any) -> StripeEvent:
    body = {
        "id": "evt_1",
        "object": "event",
        "type": kind,
        "created": MAY_1_NOON,
        "data": {"object": obj, **data},
    }
    return parse_event(orjson.dumps(body))


def processor() -> StripeProcessor:
    return StripeProcessor(
        store=None,  # type: ignore[arg-type]  # planning never touches the store
        mapping=load_mapping("stripe"),
        metadata_key="company_id",
        missing="customer_id",
    )


def test_subscription_event_maps_to_the_company_properties() -> None:
    sub = subscription(
        {"price": price(4900), "quantity": 2},
        status="trialing",
        trial_end=MAY_1_NOON + 86400,
        cancel_at_period_end=False,
    )
    plan = processor().plan_subscription(stripe_event("customer.subscription.created", sub), "acme")
    assert plan.update is not None
    assert plan.update.metadata == {
        "plan": "Pro",
        "subscription_status": "trialing",
        "mrr": 0.0,
        "currency": "usd",
        "current_period_end": "2024-05-01T12:00:00Z",
        "trial_end": "2024-05-02T12:00:00Z",
        "cancel_at_period_end": False,
    }
    assert plan.update.event_key == "evt_1"
    assert plan.update.property_times == dict.fromkeys(plan.update.metadata, MAY_1_NOON)
    assert plan.unmapped > 0  # id, customer, items' fields... are not forwarded
    assert plan.outcome == "forwarded"


def test_subscription_with_unknown_mrr_is_reported_and_the_rest_forwarded() -> None:
    sub = subscription({"price": price(None), "quantity": 1})
    plan = processor().plan_subscription(stripe_event("customer.subscription.updated", sub), "a")
    assert plan.outcome == "invalid_value"
    assert plan.invalid_fields == ["mrr"]
    assert plan.update is not None
    assert "mrr" not in plan.update.metadata
    assert plan.update.metadata["subscription_status"] == "active"


def test_customer_event_forwards_only_mapped_fields_and_clears_removed_ones() -> None:
    customer = {
        "id": "cus_1",
        "object": "customer",
        "email": "jane@example.com",
        "name": "Acme GmbH",
        "phone": "+1 555",
        "created": MAY_1_NOON,
        "currency": "eur",
        "delinquent": False,
        "address": None,
        "metadata": {"company_id": "acme"},
    }
    event = stripe_event(
        "customer.updated", customer, previous_attributes={"address": {"country": "DE"}}
    )
    plan = processor().plan_customer(event, "acme")
    assert plan.update is not None
    assert plan.update.metadata == {
        "stripe_customer_id": "cus_1",
        "name": "Acme GmbH",
        "stripe_customer_since": "2024-05-01T12:00:00Z",
        "currency": "eur",
        "delinquent": False,
        "billing_country": None,
    }
    assert plan.unmapped == 2  # email, phone: personal data stays out


def test_stripe_malformed_events() -> None:
    for body in (b"[]", b"{", b'{"id": "evt_1"}', b'{"id":"e","type":"t","created":1,"data":{}}'):
        with pytest.raises(Malformed):
            parse_event(body)
    no_customer = {
        "id": "evt_1",
        "type": "customer.subscription.created",
        "created": 1,
        "data": {"object": {"id": "sub_1"}},
    }
    with pytest.raises(Malformed, match="customer"):
        parse_event(orjson.dumps(no_customer))
    other = {"id": "evt_2", "type": "invoice.paid", "created": 1, "data": {"object": {}}}
    assert parse_event(orjson.dumps(other)).type == "invoice.paid"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "evt_\u0000"}, "id"),  # the dedup key: PostgreSQL text cannot hold NUL
        ({"id": "evt\n1"}, "id"),
        ({"id": "   "}, "id"),
        ({"id": 12}, "id"),
        ({"created": True}, "created"),
        ({"created": "1714564800"}, "created"),
        ({"data": {"object": {"id": "cus_\u0000"}}}, "data.object.id"),
        ({"data": {"object": {"id": "c" * 256}}}, "data.object.id"),
    ],
)
def test_stripe_events_with_unstorable_ids_are_malformed(
    change: dict[str, Any], field: str
) -> None:
    event = {
        "id": "evt_1",
        "type": "customer.updated",
        "created": 1,
        "data": {"object": {"id": "cus_1"}},
        **change,
    }
    with pytest.raises(Malformed) as info:
        parse_event(orjson.dumps(event))
    assert info.value.errors and info.value.errors[0][0] == field


@pytest.mark.parametrize(
    "value",
    [
        "1000",
        "12.5",
        " 7 ",
        ".5",
        "1e3",
        "0x10",
        "١٢",
        "true",
        "FALSE",
        "yes",
        3,
        2.5,
        True,
        "2026-12-01",
        "2026-12-01T10:00:00+02:00",
        "20261201",
        "12/01/2026",
        "next tuesday",
        "9" * 30,
        2**63,
        "",
    ],
)
@pytest.mark.parametrize("kind", ["string", "number", "boolean", "date"])
def test_mappings_and_the_schema_convert_alike(value: Any, kind: str) -> None:
    """One conversion module: a mapped value converts exactly as a declared one does (dates in
    strings alike; a number for a date is an epoch in the mapping's unit)."""
    from app.domain.values import ValueMismatch, to_type

    digits = str(value).strip()
    if kind == "date" and (
        isinstance(value, int | float) or (digits.isascii() and digits.isdigit())
    ):
        return  # the mapping reads it in its source's unit, the schema by magnitude
    try:
        expected: Any = to_type(value, kind, stringify=True)  # type: ignore[arg-type]
    except ValueMismatch:
        expected = ConversionError
    try:
        got: Any = convert(value, kind, epoch="ms")  # type: ignore[arg-type]
    except ConversionError:
        got = ConversionError
    assert got == expected


def test_only_properties_an_enabled_source_can_write_take_an_api_updates_time() -> None:
    """An API update stamps its acceptance as the source time of a property only where a
    source could ever send an older value of it (issue 20, finding 8, at no cost otherwise)."""
    assert sourced_properties({}) == frozenset()
    hubspot = sourced_properties({"hubspot": None})
    assert {"name", "domain", "employees"} <= hubspot and "plan" not in hubspot
    both = sourced_properties({"hubspot": None, "stripe": None})
    assert {"plan", "mrr", "name"} <= both and "seats" not in both
