"""Pure logic of data quality: declared property types and their conversions, the PII guard."""

from __future__ import annotations

import random
import time

import pytest

from app.domain.models import Primitive
from app.domain.pii import MAX_VALUE, PII_KINDS, card_brand, find_pii, luhn_valid
from app.domain.schema import PropertyRule, PropertySchema, check
from app.domain.values import (
    EPOCH_MS_FROM,
    PROPERTY_TYPES,
    EpochUnit,
    PropertyType,
    ValueMismatch,
    iso_from_epoch,
    seen_type,
    to_type,
)
from app.sources.mapping import convert

MAY_1_NOON = 1714564800  # 2024-05-01T12:00:00Z
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
HUGE = 10**400


def _short(value: object) -> str:
    """A readable test id, however long the value."""
    text = ascii(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} chars)"


def _refused(value: Primitive, kind: PropertyType, **options: object) -> ValueMismatch:
    with pytest.raises(ValueMismatch) as caught:
        to_type(value, kind, **options)  # type: ignore[arg-type]
    return caught.value


# to_type: every type ---------
@pytest.mark.parametrize("kind", PROPERTY_TYPES)
def test_null_always_passes(kind: PropertyType) -> None:
    assert to_type(None, kind) is None
    assert to_type(None, kind, epoch="ms", stringify=True) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000, 1000),
        (-3, -3),
        (0, 0),
        (MAX_INT64, MAX_INT64),
        (MIN_INT64, MIN_INT64),
        (12.5, 12.5),
        (1e308, 1e308),
        (-0.0, -0.0),
        ("1000", 1000),
        ("12.5", 12.5),
        ("-3", -3),
        ("+5", 5),
        ("-0", 0),
        ("007", 7),
        ("0" * 4298 + "42", 42),  # 4,300 digits, leading zeros counted: the limit itself
        ("1e3", 1000.0),
        ("1E+3", 1000.0),
        ("2.5e-3", 0.0025),
        ("0.1", 0.1),
        ("12.50", 12.5),
        ("0e999999999", 0.0),  # zero whatever the exponent: nothing lost
        ("9223372036854775807", MAX_INT64),
        ("-9223372036854775808", MIN_INT64),
        (" 42 ", 42),
        ("\t\r\n42\x0b\x0c", 42),
        ("4503599627370496.0", 4503599627370496.0),  # 2**52: exact as a double
        ("1e19", 1e19),  # a float may exceed the 64-bit range: it is exact
    ],
    ids=_short,
)
def test_numbers_that_convert(value: Primitive, expected: float) -> None:
    converted = to_type(value, "number")
    assert converted == expected
    assert type(converted) is type(expected)


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        (2**63, "outside the signed 64-bit range"),
        (MIN_INT64 - 1, "outside the signed 64-bit range"),
        (HUGE, "outside the signed 64-bit range"),
        (float("inf"), "not finite"),
        (float("-inf"), "not finite"),
        (float("nan"), "not finite"),
        ("9223372036854775808", "outside the signed 64-bit range"),
        ("-9223372036854775809", "outside the signed 64-bit range"),
        ("18446744073709551615", "outside the signed 64-bit range"),
        ("1" * 21, "outside the signed 64-bit range"),
        ("1" * 4301, "more than 4,300 digits"),
        ("0" * 4301, "more than 4,300 digits"),
        ("-" + "9" * 4301, "more than 4,300 digits"),
        ("1." + "5" * 4300, "more than 4,300 digits"),
        ("1e999999", "too large"),
        ("-1e999999", "too large"),
        ("1e" + "9" * 40, "too large"),
        ("1e-999", "more precision"),  # a double says 0.0
        ("1e-" + "9" * 40, "more precision"),
        ("3.14159265358979323846", "more precision"),
        ("9007199254740993.0", "more precision"),
        ("1" * 300 + ".5", "more precision"),
        ("1" * 400 + ".5", "too large"),
        ("", "not a number"),
        ("   ", "not a number"),
        ("a lot", "not a number"),
        ("abc", "not a number"),
        ("1,000", "not a number"),
        ("1_000", "not a number"),
        ("12 employees", "not a number"),
        (".5", "not a number"),
        ("5.", "not a number"),
        ("0x10", "not a number"),
        ("1e", "not a number"),
        ("--1", "not a number"),
        ("NaN", "not a number"),
        ("nan", "not a number"),
        ("inf", "not a number"),
        ("Infinity", "not a number"),
        ("\u0661\u0662\u0663", "not a number"),  # Arabic-Indic digits: int() would take them
        ("\uff11\uff12", "not a number"),  # full-width digits
        ("\xb2", "not a number"),  # '²': str.isdigit() says yes
        ("1\xb2", "not a number"),
        ("\xa042", "not a number"),  # no-break space is not stripped
        ("\u200b42", "not a number"),
        ("42\x00", "not a number"),
        ("\x0042", "not a number"),
        ("4\x1b2", "not a number"),
        ("\ud800", "not a number"),
        ("4\ud8002", "not a number"),
        ("1" * 1_000_000 + "x", "not a number"),
    ],
    ids=_short,
)
def test_numbers_refused(value: Primitive, got: str) -> None:
    refused = _refused(value, "number")
    assert refused.expected == "number"
    assert got in refused.got
    assert str(refused).startswith("expected a number, got ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        (" true\n", True),
    ],
)
def test_booleans_that_convert(value: Primitive, expected: bool) -> None:
    assert to_type(value, "boolean") is expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        0.0,
        1.0,
        "0",
        "1",
        "yes",
        "no",
        "on",
        "t",
        "",
        "truee",
        "tru e",
        "\xa0true",
        "true\x00",
    ],
)
def test_booleans_refused(value: Primitive) -> None:
    refused = _refused(value, "boolean")
    assert refused.expected == "boolean"
    assert str(refused).startswith("expected a boolean, got ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-01", "2026-12-01T00:00:00Z"),
        ("2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z"),
        ("2026-12-01t10:00:00z", "2026-12-01T10:00:00Z"),
        ("2026-12-01 10:00:00", "2026-12-01T10:00:00Z"),  # no offset: taken as UTC
        ("2026-12-01T10:00", "2026-12-01T10:00:00Z"),
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00Z"),
        ("2024-05-01T14:00:00+0200", "2024-05-01T12:00:00Z"),
        ("2024-05-01T14:00+02", "2024-05-01T12:00:00Z"),
        ("2024-05-01T08:30:00-03:30", "2024-05-01T12:00:00Z"),
        ("2024-05-01T12:00:00-00:00", "2024-05-01T12:00:00Z"),
        ("2024-12-31T23:30:00-01:00", "2025-01-01T00:30:00Z"),
        ("2024-05-01T12:00:00.250Z", "2024-05-01T12:00:00.250Z"),
        ("2024-05-01T12:00:00,25Z", "2024-05-01T12:00:00.250Z"),
        ("2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00.123Z"),  # truncated to ms
        ("2024-05-01T12:00:00.0009Z", "2024-05-01T12:00:00Z"),
        ("2024-02-29", "2024-02-29T00:00:00Z"),
        ("1899-12-31", "1899-12-31T00:00:00Z"),  # an ISO string may be before 1970
        ("0001-01-01", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        (" 2026-12-01\n", "2026-12-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (MAY_1_NOON, "2024-05-01T12:00:00Z"),
        (MAY_1_NOON * 1000, "2024-05-01T12:00:00Z"),
        (MAY_1_NOON * 1000 + 250, "2024-05-01T12:00:00.250Z"),
        (MAY_1_NOON + 0.123, "2024-05-01T12:00:00.123Z"),
        (MAY_1_NOON * 1000.0, "2024-05-01T12:00:00Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),  # "never expires", in seconds
        (253_402_300_799.5, "9999-12-31T23:59:59.500Z"),
        (EPOCH_MS_FROM - 1, "9999-12-31T23:59:59Z"),  # the last number read as seconds
        (EPOCH_MS_FROM, "1978-01-11T21:31:40.800Z"),  # the first read as milliseconds
        (100_000_000_000, "5138-11-16T09:46:40Z"),  # seconds, not 1973 in milliseconds
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
    ids=_short,
)
def test_dates_that_convert(value: Primitive, expected: str) -> None:
    assert to_type(value, "date") == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        -1,
        -0.5,
        253_402_300_800_000,  # 10000-01-01 in milliseconds
        2**63,
        -(2**63),
        HUGE,
        10.0**300,
        float("inf"),
        float("nan"),
        "",
        "next tuesday",
        "12/01/2026",
        "01.12.2026",
        "2026/12/01",
        "20261201",  # ISO 8601 basic format
        "2026-W48-2",  # week date
        "2026-335",  # ordinal date
        "2026-12",
        "2026-12-1",
        "26-12-01",
        "+2026-12-01",
        "2026-12-01T10",
        "2026-12-01T10:00:00+2:00",
        "2026-12-01T10:00:00+02:0",
        "2026-12-01T10:00:00 +02:00",
        "2026-12-01T10:00:00.Z",
        "2026-12-01T10:00:00.1234567890Z",
        "2026-12-01Z",
        "2026-12-01+02:00",
        "2026-12-01T10:00:00Zjunk",
        "2026-13-01",
        "2026-02-29",
        "2026-12-32",
        "0000-01-01",
        "2026-12-01T24:00:00Z",
        "2026-12-01T23:59:60Z",
        "2026-12-01T10:60:00Z",
        "2026-12-01T10:00:00+24:00",
        "2026-12-01T10:00:00+05:60",
        "0001-01-01T00:00:00+05:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-05:00",  # after 9999 once in UTC
        "\u0662\u0660\u0662\u0666-12-01",  # Arabic-Indic digits
        "\uff12\uff10\uff12\uff16-12-01",  # full-width digits
        "2026-12-01\x00",
        "\x002026-12-01",
        "2026-12-01\ud800",
        "\xa02026-12-01",
        "1714564800",  # a digit string is not a date without a declared unit
        "1714564800000",
        "2026-12-01" * 6554,
    ],
    ids=_short,
)
def test_dates_refused(value: Primitive) -> None:
    refused = _refused(value, "date")
    assert refused.expected == "date"
    assert str(refused).startswith("expected a date, got ")


def test_a_declared_epoch_unit_reads_numbers_and_digit_strings_in_it() -> None:
    assert to_type(MAY_1_NOON, "date", epoch="s") == "2024-05-01T12:00:00Z"
    assert to_type(MAY_1_NOON * 1000, "date", epoch="ms") == "2024-05-01T12:00:00Z"
    assert to_type(str(MAY_1_NOON * 1000 + 250), "date", epoch="ms") == "2024-05-01T12:00:00.250Z"
    assert to_type(f" {MAY_1_NOON} ", "date", epoch="s") == "2024-05-01T12:00:00Z"
    assert to_type("0" * 10 + "5", "date", epoch="s") == "1970-01-01T00:00:05Z"
    # Magnitude no longer decides: a small millisecond value is 1970.
    assert to_type(1000, "date", epoch="ms") == "1970-01-01T00:00:01Z"
    assert to_type(EPOCH_MS_FROM - 1, "date", epoch="ms") == "1978-01-11T21:31:40.799Z"
    assert to_type(100_000_000_000, "date", epoch="s") == "5138-11-16T09:46:40Z"
    assert to_type("2026-12-01", "date", epoch="ms") == "2026-12-01T00:00:00Z"
    for bad in ("99999999999999999", "1" * 5000, "0" * 4301, "-5", "+5", "1714564800.5", "\u0661"):
        _refused(bad, "date", epoch="ms")
    _refused(253_402_300_800, "date", epoch="s")


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (253_402_300_799, "s", "9999-12-31T23:59:59Z"),  # Stripe's "never expires"
        (MAY_1_NOON, "s", "2024-05-01T12:00:00Z"),
        (MAY_1_NOON * 1000 + 250, "ms", "2024-05-01T12:00:00.250Z"),
        (253_402_300_799_999, "ms", "9999-12-31T23:59:59.999Z"),
    ],
)
def test_an_epoch_reads_the_same_through_a_schema_and_a_source_mapping(
    value: int, unit: EpochUnit, expected: str
) -> None:
    """A date declared in the property schema (no unit: told apart by magnitude) and one a
    source mapping converts in its own unit agree for every epoch a source sends."""
    schema = PropertySchema(properties={"renews_at": PropertyRule(type="date")})
    assert check(schema, {"renews_at": value}).metadata == {"renews_at": expected}
    assert convert(value, "date", epoch=unit) == expected


def test_epochs_through_the_helper() -> None:
    assert iso_from_epoch(0.123) == "1970-01-01T00:00:00.123Z"
    assert iso_from_epoch(1.0009, "s") == "1970-01-01T00:00:01Z"
    assert iso_from_epoch(1714564800123.9, "ms") == "2024-05-01T12:00:00.123Z"
    with pytest.raises(ValueMismatch):
        iso_from_epoch(True)  # a bool is an int to Python, never a date here


@pytest.mark.parametrize(
    "value", ["Acme", "", " padded ", "\x00\x1f", "\ud800", "1000", "true", "2026-12-01"]
)
def test_strings_pass_unchanged(value: str) -> None:
    assert to_type(value, "string") is value


@pytest.mark.parametrize(
    ("value", "got"), [(12, "a number"), (1.5, "a number"), (True, "a boolean"), (0, "a number")]
)
def test_a_number_or_boolean_for_a_string_is_refused(value: Primitive, got: str) -> None:
    refused = _refused(value, "string")
    assert (refused.expected, refused.got) == ("string", got)
    assert str(refused) == f"expected a string, got {got}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12, "12"), (-3, "-3"), (1.5, "1.5"), (1e20, "1e+20"), (True, "true"), (False, "false")],
)
def test_stringify_gives_numbers_and_booleans_their_text(value: Primitive, expected: str) -> None:
    assert to_type(value, "string", stringify=True) == expected


@pytest.mark.parametrize("value", [2**63, HUGE, float("nan"), float("inf")])
def test_stringify_still_refuses_what_has_no_honest_text(value: Primitive) -> None:
    _refused(value, "string", stringify=True)


SECRET_VALUES: list[Primitive] = [
    "zz-secret-zz",
    "bob@example.com",
    "9" * 30,
    "1e999999",
    "\u0661\u0662\u0663",
    "2026-12-01T10:00:00+05:60",
    "0001-01-01T00:00:00+05:00",
    "next tuesday",
    2**64 + 12345,
    123456.789,
    -98765,
]


@pytest.mark.parametrize("value", SECRET_VALUES, ids=_short)
@pytest.mark.parametrize("kind", PROPERTY_TYPES)
def test_a_refusal_never_holds_the_value(value: Primitive, kind: PropertyType) -> None:
    try:
        to_type(value, kind)
    except ValueMismatch as refused:
        message = str(refused)
        assert str(value) not in message
        assert repr(value) not in message
        assert message == f"expected a {refused.expected}, got {refused.got}"
        assert isinstance(refused, ValueError)


# seen_type ---------
@pytest.mark.parametrize(
    ("value", "seen"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "number"),
        (1000, "number"),
        (12.5, "number"),
        (2**70, "number"),
        ("1000", "string"),  # the drift the catalogue exists to show
        ("true", "string"),
        ("Acme", "string"),
        ("", "string"),
        ("1714564800", "string"),
        ("2026-12-01", "date"),
        ("2026-12-01T10:00:00+02:00", "date"),
        (" 2026-12-01 ", "date"),
        ("2026-02-30", "string"),
        ("0001-01-01T00:00:00+05:00", "string"),
        ("12/01/2026", "string"),
        ("2026-12-01 and more", "string"),
        ("\ud800", "string"),
        ("x" * 65_535, "string"),
    ],
    ids=_short,
)
def test_seen_type(value: Primitive, seen: str) -> None:
    assert seen_type(value) == seen


def test_a_string_seen_as_a_date_is_one_the_date_type_takes() -> None:
    for value in ("2026-12-01", "2026-12-01T10:00Z", "2026-12-01 10:00:00.5", "2026-12-32"):
        assert (seen_type(value) == "date") == _converts(value)


def _converts(value: str) -> bool:
    try:
        to_type(value, "date")
    except ValueMismatch:
        return False
    return True


# find_pii ---------
EMAIL, PHONE, IP, CARD = PII_KINDS

# Personal data as people really type it: every one must be found (recall 1.0). The key, when
# given, is the property's name (a card word there is evidence for a bare card number).
PERSONAL: list[tuple[Primitive, str, str | None]] = [
    ("bob@example.com", EMAIL, None),
    ("contact: bob@example.com", EMAIL, None),
    ("Bob <bob.smith+billing@mail.example.co.uk>", EMAIL, None),
    ("first_last@example.io, second@example.org", EMAIL, None),
    ("mailto:ops@acme-corp.com?subject=hi", EMAIL, None),
    ("a@b.cd", EMAIL, None),
    ("\x00bob@example.com\x00", EMAIL, None),
    ("\ud800bob@example.com", EMAIL, None),
    ("josé@example.com", EMAIL, None),  # a non-ASCII local part
    ("bob@bücher.de", EMAIL, None),  # an internationalised domain
    ("müller.jürgen@straße.example", EMAIL, None),
    (
        "\u0438\u0432\u0430\u043d@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
        EMAIL,
        None,
    ),  # Cyrillic
    ("o'brien@example.ie", EMAIL, None),
    ("Reply to jane.doe@example.com: thanks", EMAIL, None),
    ("+14155552671", PHONE, None),  # E.164
    ("+1 415 555 2671", PHONE, None),
    ("+1-415-555-2671", PHONE, None),
    ("+1.415.555.2671", PHONE, None),
    ("+1 (415) 555-2671", PHONE, None),
    ("+44 (0)20 7946 0958", PHONE, None),
    ("+33 1 23 45 67 89", PHONE, None),
    ("call +49 30 901820 today", PHONE, None),
    ("tel:+12345678", PHONE, None),  # 8 digits: the fewest
    ("+123456789012345", PHONE, None),  # 15 digits: the most
    ("+1\u00a0415\u00a0555\u00a02671", PHONE, None),  # no-break spaces
    ("+33\u202f1\u202f23\u202f45\u202f67\u202f89", PHONE, None),  # narrow no-break spaces
    ("+1 415\u2013555\u20132671", PHONE, None),  # en dashes
    ("+1 415 \u2013 555 2671", PHONE, None),
    ("+44  20  7946  0958", PHONE, None),  # double spaces
    ("+14155552671x12", PHONE, None),  # a glued extension
    ("+1 415 555 2671 ext. 204", PHONE, None),
    ("+49 30/901820", PHONE, None),
    ("81.2.69.142", IP, None),
    ("client 203.0.113.7 connected", IP, None),  # documentation ranges stand for real ones
    ("http://198.51.100.4:8080/path", IP, None),
    ("last seen from 93.184.216.34", IP, None),
    ("2001:db8::1", IP, None),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", IP, None),
    ("[2001:db8::ff00:42:8329]:443", IP, None),
    ("2a00:1450:4001:82b::200e", IP, None),
    ("::ffff:81.2.69.142", IP, None),
    ("4111 1111 1111 1111", CARD, None),
    ("4111-1111-1111-1111", CARD, None),
    ("4111\u00a01111\u00a01111\u00a01111", CARD, None),  # no-break spaces
    ("4111.1111.1111.1111", CARD, None),
    ("4111/1111/1111/1111", CARD, None),
    ("4111\u20131111\u20131111\u20131111", CARD, None),
    ("card: 5555 5555 5555 4444, exp 12/28", CARD, None),  # Mastercard
    ("3782 822463 10005", CARD, None),  # Amex, 4-6-5
    ("3056 930902 5904", CARD, None),  # Diners, 4-6-4
    ("6011 1111 1111 1117", CARD, None),  # Discover
    ("2223 0031 2200 3222", CARD, None),  # Mastercard 2-series
    ("4222 2222 2222 2", CARD, None),  # Visa, 13 digits
    ("6212 3456 7890 1265", CARD, None),  # UnionPay
    ("3530 1113 3330 0000", CARD, None),  # JCB
    ("4111 1111 1111 1111 123", CARD, None),  # followed by a CVV
    ("x 4111 1111 1111 1111.", CARD, None),
    ("paid by card 4111111111111111", CARD, None),  # bare, with a card word
    ("Visa 4111111111111111 exp 12/28", CARD, None),
    ("4111111111111111", CARD, "card_number"),  # bare, with a card name
    ("6011111111111117", CARD, "cc"),
    ("5555555555554444", CARD, "credit_card"),
    (4111111111111111, CARD, "card_number"),
    (5555555555554444, CARD, "pan"),
    (4222222222222, CARD, "card"),
    (4111111111111111.0, CARD, "cc_number"),  # a whole float holds every card exactly
]


def _luhn_ids(count: int, seed: int) -> list[str]:
    """Random 16-digit ids starting with 2 to 6 that pass Luhn: one id in ten does by chance."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        digits = str(rng.randint(2, 6)) + "".join(str(rng.randint(0, 9)) for _ in range(15))
        if luhn_valid(digits):
            out.append(digits)
    return out


# Ordinary data that must pass under the default `reject` (false positives 0).
ORDINARY: list[Primitive] = [
    None,
    True,
    False,
    0,
    42,
    12.5,
    4111111111111111,  # a number with no card name: an id
    4111111111111111.5,  # a float with a fraction is a measurement, not a card
    1714564800006.0,
    -4111111111111111,
    1714564800006,  # epoch milliseconds passing Luhn
    1714564800,
    4111111111111112,
    2**63 - 1,
    "",
    "Acme Inc.",
    "Acme Corporation GmbH & Co. KG",
    "enterprise",
    "Enterprise Plus (annual)",
    "2026-12-01",
    "2026-12-01T10:00:00Z",
    "2026-12-01T10:00:00.123Z",
    "2026-12-01 10:00:00+02:00",
    "10:30:00",
    "12:00",
    "1,234.56",
    "-1,234,567.89",
    "$1,299.00",
    "EUR 12.345.678,90",
    "12.5%",
    "+12.5%",
    "1.2.3.4",  # a four-part version
    "2.0.0.1",
    "v1.2.3.4",
    "version 10.2.30.40",
    "build 4.18.0.305",
    "1.2.3",
    "1.2.3.4.5",
    "version 10.0.19045.2965",
    "01.02.03.04",  # leading zeros: not how an address is written
    "256.1.1.1",
    "0.0.0.0",
    "8.8.8.8",  # a public resolver in version shape: identifies nobody
    "10.0.0.12",  # private addresses
    "10.20.30.40",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.20",
    "server 192.168.0.10:5432",
    "127.0.0.1",
    "169.254.169.254",  # link-local (cloud metadata)
    "100.64.1.2",  # shared (carrier-grade NAT)
    "255.255.255.255",
    "224.0.0.251",  # multicast
    "::1",
    "::",
    "fe80::1%eth0",  # link-local
    "fd12:3456:789a::1",  # unique local
    "ff02::fb",  # multicast
    "dead:beef::cafe",  # reserved, not global unicast
    "Ad::Feed",  # a Ruby or C++ constant
    "Admin::Feed::Item",
    "std::vector",
    "Foo::Bar::baz",
    "00:1A:2B:3C:4D:5E",  # a MAC address
    "00:1A:2B:FF:FE:3C:4D:5E",  # an EUI-64
    "00-1A-2B-FF-FE-3C-4D-5E",
    "021a:2bff:fe3c:4d5e",
    "git@github.com:acme/x.git",  # SSH remotes
    "git@gitlab.example.com:group/sub/project.git",
    "ssh://git@github.com/acme/x.git",
    "https://github.com/acme/x",  # URLs without user info
    "https://acme.example.com/path?q=1#frag",
    "https://example.com:8443/a/b",
    "550e8400-e29b-41d4-a716-446655440000",  # UUIDs
    "12345678-1234-1234-1234-123456789012",
    "ORD-2026-000123",  # order numbers
    "PO 4500012345",
    "INV/2026/004211",
    "4111111111111111",  # a bare run of digits with no card word: an id
    "ref 12 4111111111111111",
    "6011111111111117",
    "(415) 555-2671",  # a local number: international form only
    "415-555-2671",
    "+1 415 555",  # 7 digits
    "+1234567890123456",  # 16 digits
    "a+123456789",
    "+123456789abc",
    "1714564800006",
    "4111 1111 1111 1112",  # fails Luhn
    "1111 1111 1111 1117",  # passes Luhn, but no card network starts with 1
    "9111 1111 1111 1111",
    "a4111 1111 1111 1111",
    "0.4111 1111 1111 1111",
    "4111111111111111,5",
    "41111111111111111111",  # 20 digits
    "10 20 30 40 50 60 70 80 90",
    "@example.com",
    "bob@",
    "bob@localhost",
    "pkg@1.2.3",
    "user@example.c",
    "@@@@",
    "a@b",
    "\x00\x01\x02\x7f",
    "\ud800\udfff\ud800",
    "\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661",
    "\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff12\uff16\uff17\uff11",
    "+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0662\u0666\u0667\u0661",
]
LUHN_IDS = _luhn_ids(1000, seed=20)


@pytest.mark.parametrize(("value", "kind", "key"), PERSONAL, ids=_short)
def test_pii_is_found(value: Primitive, kind: str, key: str | None) -> None:
    assert find_pii(value, key) == kind


@pytest.mark.parametrize("value", ORDINARY, ids=_short)
def test_ordinary_values_are_not_flagged(value: Primitive) -> None:
    assert find_pii(value) is None
    assert find_pii(value, "notes") is None


def test_recall_and_false_positives_on_the_tables() -> None:
    """The guard's figures on realistic data: every kind found, no ordinary value refused,
    and none of 1,000 random Luhn-valid ids (one id in ten would pass on Luhn alone)."""
    found = sum(find_pii(value, key) == kind for value, kind, key in PERSONAL)
    ordinary = ORDINARY + LUHN_IDS + [int(i) for i in LUHN_IDS]
    flagged = [value for value in ordinary if find_pii(value, "id") is not None]
    recall, false_positives = found / len(PERSONAL), len(flagged) / len(ordinary)
    print(f"recall {recall:.3f} of {len(PERSONAL)}; false positives {false_positives:.4f}")
    assert recall == 1.0
    assert flagged == []
    # The same ids with a card word or name about them are cards: the context decides.
    cards = [i for i in LUHN_IDS if card_brand(i)]
    assert len(cards) > 500
    assert all(find_pii(i, "card_number") == CARD for i in cards)
    assert all(find_pii(f"{i[:4]} {i[4:8]} {i[8:12]} {i[12:]}") == CARD for i in cards)


def test_the_first_kind_in_order_is_answered() -> None:
    assert find_pii("bob@example.com, +14155552671, 81.2.69.142, 4111 1111 1111 1111") == EMAIL
    assert find_pii("81.2.69.142, 4111 1111 1111 1111, +14155552671") == PHONE
    assert find_pii("4111 1111 1111 1111, 81.2.69.142") == IP


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("79927398713", True),
        ("0", True),
        ("4111111111111112", False),
        ("79927398710", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


def test_the_ordinary_numbers_above_would_pass_luhn() -> None:
    # So the card network rule, not Luhn, is what keeps them out.
    assert luhn_valid("1714564800006")
    assert luhn_valid("1111111111111117")


LONG = 65_535
# Shapes that make a careless pattern backtrack: a run of what one pattern takes that ends in
# what it refuses. Each finishes quickly because every pattern is linear by construction.
ADVERSARIAL_UNITS = [
    "a",
    "1",
    "1 ",
    "1-",
    "1.",
    "1,",
    "1:",
    "0.",
    "-1",
    ":",
    "::",
    "a:",
    "f:",
    "@",
    "a@",
    "a.",
    "a@a.",
    "a-",
    "+",
    "+1",
    "+1 ",
    "+1(",
    "(1",
    "1)",
    "4111 ",
    "+1111111 ",
    "1.1.1.",
    "2001:db8::",
    "1" * 12 + "a",
    "x@" + "a" * 62 + "-",
    "a" * 63 + ".",
    "\x00",
    "\ud800",
    "\u00e9@",
    "\u00e9.",
    "a@\u00e9.",
    "a'",
    "git@h:",
    "4111\u00a0",
    "4111.",
    "4111/",
    "4111 1111 ",
    "3782 822463 ",
    "+1\u00a0",
    "+1  ",
    "+1 \u2013 ",
    "1x",
    "+1x1",
    "2001:db8::1 ",
    "81.2.69.14 ",
    "1.2.3.4 ",
    "card 4539578763621480 ",
    "4539578763621480 ",
]


@pytest.mark.parametrize("unit", ADVERSARIAL_UNITS, ids=_short)
def test_long_hostile_values_are_handled(unit: str) -> None:
    value = (unit * (LONG // len(unit) + 1))[:LONG]
    find_pii(value)
    find_pii("x@y." + value)
    find_pii(value + "bob@example.com")
    assert find_pii(value[: LONG - 20] + " bob@example.com") == EMAIL
    for kind in PROPERTY_TYPES:
        try:
            to_type(value, kind)
            to_type(value, kind, epoch="ms")
        except ValueMismatch:
            pass
    assert seen_type(value) == "string"


def _worst_case_values() -> list[str]:
    rng = random.Random(12)
    groups = " ".join(str(rng.randint(2000, 6999)) for _ in range(LONG // 5 + 1))
    units = [(u * (LONG // len(u) + 1))[:LONG] for u in ADVERSARIAL_UNITS]
    return [*units, groups[:LONG], ("card " + groups)[:LONG]]


def test_the_scan_of_the_longest_value_takes_a_few_milliseconds() -> None:
    """Every pattern is linear: the most expensive 65,535-character value we know of is
    scanned in milliseconds (best of three, so a busy machine does not decide)."""
    assert LONG == MAX_VALUE
    worst, slowest = 0.0, ""
    for value in _worst_case_values():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            find_pii(value, "notes")
            best = min(best, time.perf_counter() - started)
        if best > worst:
            worst, slowest = best, value[:12]
    print(f"slowest 65,535-character value: {worst * 1000:.1f} ms ({slowest!r}...)")
    assert worst < 0.05, f"{slowest!r}... took {worst * 1000:.1f} ms"


def test_a_long_value_is_never_kept_by_the_date_cache() -> None:
    """Only texts of a date's length are remembered: a caller's long values cannot pin memory."""
    from app.domain.values import _iso_text

    before = _iso_text.cache_info().currsize
    assert seen_type("x" * 900_000) == "string"
    assert seen_type(" 2031-01-02 ") == "date"
    assert _iso_text.cache_info().currsize <= before + 1
