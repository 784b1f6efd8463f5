"""What a subscription is worth and called: MRR, plan names, the flat record the mapping reads.

`mrr` sums every item's unit amount times quantity, normalised to a month (year / 12,
week * 52 / 12, day * 365 / 12, divided by the interval count), in major currency units,
before discounts; it is 0 unless the subscription is `active` or `past_due` (Stripe's own
definition: trials and cancelled subscriptions bring no revenue). A price without a unit
amount (tiered, metered) makes it unknown: reported, not sent; so does an amount no real price
has (`1e999999`, beyond 10^15 minor units): never a 500.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from app.domain.models import Primitive
from app.sources.mapping import flatten

_REVENUE_STATUSES = frozenset({"active", "past_due"})
_PER_MONTH = {
    "day": Decimal(365) / Decimal(12),
    "week": Decimal(52) / Decimal(12),
    "month": Decimal(1),
    "year": Decimal(1) / Decimal(12),
}
# ISO 4217 currencies Stripe counts in whole units, or in thousandths.
_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
# Stripe amounts are at most 12 digits (unit_amount_decimal: 12 decimals more); anything at or
# beyond 10^15 minor units is no price, and Decimal arithmetic on it could overflow.
_MAX_UNIT_EXPONENT = 15
# A decimal string in ASCII (Decimal() would also read other scripts' digits, NaN, Infinity).
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class UnknownAmount(ValueError):
    """An item's price has no fixed unit amount, so its monthly revenue is unknown."""


def _decimals(currency: str | None) -> int:
    code = (currency or "").lower()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def _item_monthly_minor(item: Mapping[str, Any]) -> Decimal:
    price = item.get("price") if isinstance(item.get("price"), dict) else item.get("plan")
    if not isinstance(price, dict):
        raise UnknownAmount("an item has no price")
    nested = price.get("recurring")
    recurring: dict[str, Any] = nested if isinstance(nested, dict) else price
    interval = recurring.get("interval")
    count = recurring.get("interval_count") or 1
    if interval not in _PER_MONTH or type(count) is not int or count < 1:
        raise UnknownAmount("an item's price has no recurring interval")
    if recurring.get("usage_type") == "metered":
        raise UnknownAmount("an item's price is metered")
    amount: Any = price.get("unit_amount")
    if amount is None:
        amount = price.get("unit_amount_decimal") or price.get("amount")
    unit = _amount(amount)
    if unit is None:
        raise UnknownAmount("an item's price has no unit amount (tiered pricing?)")
    quantity = item.get("quantity")
    quantity = 1 if quantity is None else quantity
    if type(quantity) is not int or quantity < 0:
        raise UnknownAmount("an item has no valid quantity")
    return unit * quantity * _PER_MONTH[interval] / count


def _amount(value: Any) -> Decimal | None:
    """A price's amount in minor units: a finite number below 10^15, else None."""
    if type(value) is int or type(value) is float:
        text = repr(value)
    elif type(value) is str and len(value) <= 64 and _DECIMAL.fullmatch(value.strip()):
        text = value.strip()
    else:
        return None
    try:
        unit = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation
        return None
    if not unit.is_finite() or (unit and unit.adjusted() >= _MAX_UNIT_EXPONENT):
        return None
    return unit


def _items(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = subscription.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def monthly_recurring_revenue(subscription: Mapping[str, Any]) -> float:
    """MRR in major currency units; raises `UnknownAmount` when an item's amount is unknown."""
    if subscription.get("status") not in _REVENUE_STATUSES:
        return 0.0
    currency = subscription.get("currency")
    if not isinstance(currency, str):
        price = next((i.get("price") for i in _items(subscription)), None)
        currency = price.get("currency") if isinstance(price, dict) else None
    decimals = _decimals(currency if isinstance(currency, str) else None)
    try:
        minor = sum((_item_monthly_minor(i) for i in _items(subscription)), Decimal(0))
        major = float(round(minor / (Decimal(10) ** decimals), max(decimals, 2)))
    except ArithmeticError:  # a sum beyond Decimal's precision or float's range
        raise UnknownAmount("the subscription's amounts are out of range") from None
    if not math.isfinite(major):
        raise UnknownAmount("the subscription's amounts are out of range")
    return major


def plan_name(subscription: Mapping[str, Any]) -> str | None:
    """The names of the subscription's prices (nickname, product name, lookup key or id)."""
    names: list[str] = []
    for item in _items(subscription):
        price = item.get("price") if isinstance(item.get("price"), dict) else item.get("plan")
        if not isinstance(price, dict):
            continue
        product = price.get("product")
        candidates = (
            price.get("nickname"),
            product.get("name") if isinstance(product, dict) else None,
            price.get("lookup_key"),
            price.get("id"),
        )
        name = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
        if name is not None and name not in names:
            names.append(name)
    return ", ".join(names) or None


def subscription_record(subscription: Mapping[str, Any]) -> tuple[dict[str, Primitive], list[str]]:
    """The subscription's fields (dotted paths) plus the computed ones; and what is unknown."""
    record = flatten(subscription)
    record.pop("object", None)
    unknown: list[str] = []
    record["plan"] = plan_name(subscription)
    try:
        record["mrr"] = monthly_recurring_revenue(subscription)
    except UnknownAmount:
        record.pop("mrr", None)
        unknown.append("mrr")
    if record.get("current_period_end") is None:
        # Newer API versions keep the period on each item.
        ends = [
            i["current_period_end"]
            for i in _items(subscription)
            if type(i.get("current_period_end")) is int
        ]
        record["current_period_end"] = max(ends) if ends else None
    return record, unknown
