"""Declared property types and the lossless conversions into them: one module for every path.

A property declared `string`, `number`, `boolean` or `date` gets what Userpilot should store, or
`ValueMismatch` when the value cannot become that type without losing something. Nothing is
guessed, and `None` always passes (it removes the property). The rules:

- `number`: an int (signed 64-bit) or a finite float passes; a bool never does. A string in
  decimal notation (an optional sign, digits, optionally `.` and digits, optionally an exponent)
  converts: `"1000"` -> 1000, `"-3"`, `"+5"`, `"12.5"` -> 12.5,
  `"1e3"` -> 1000.0 (a fraction or an exponent gives a float). Only ASCII digits, at most 4,300
  of them (leading zeros count); an integer outside the signed 64-bit range is refused, never
  made a float; a decimal a double cannot hold exactly as written (`"0.1"` can,
  `"3.14159265358979323846"` cannot, nor `"1e-999"`) is refused. `".5"`, `"5."`, `"1_000"`,
  `"1,000"`, `"0x10"`, `"NaN"` and `"inf"` are not numbers.
- `boolean`: a bool passes; `"true"` and `"false"` in any case convert; 0, 1, `"yes"` do not.
- `date`: the answer is always ISO 8601 UTC, `YYYY-MM-DDTHH:MM:SSZ`, with `.fff` when the
  milliseconds are not zero (sub-millisecond digits are dropped, not rounded: JavaScript and
  Userpilot dates hold milliseconds). From a string in ISO 8601's extended format: a date
  (`2026-12-01` -> midnight UTC), or a date-time with `T`, `t` or one space, at least hours and
  minutes, optional seconds and fraction (`.` or `,`, up to 9 digits) and an optional offset
  (`Z`, `+02:00`, `+0200`, `+02`); a date-time without an offset is taken as UTC. Week and
  ordinal dates, the basic format (`20261201`) and anything else (`12/01/2026`, `next tuesday`)
  are refused, as is a moment outside years 0001..9999 once in UTC. From a number: epoch time,
  between 1970-01-01 and 9999-12-31; without a declared unit, a number that is a moment of
  those years in seconds is seconds (up to `MAX_EPOCH_S`, 253402300799, the common "never
  expires" 9999-12-31T23:59:59Z), and a larger one milliseconds (from 1978-01-11T21:31:40.800Z:
  a millisecond time before that reads as seconds, so declare the unit for such values).
  With a declared unit (a source mapping's: HubSpot milliseconds, Stripe seconds) the number
  is read in it, and a string of ASCII digits is an epoch too (HubSpot sends dates so).
- `string`: a string passes unchanged (nothing stripped); a number or a bool is refused,
  unless `stringify=True` (a source mapping's rule: they become their text, `12`, `1.5`,
  `true`).

Surrounding ASCII whitespace (space, tab, CR, LF, VT, FF) is ignored when a string converts to a
number, boolean or date; other blanks (no-break space...) and control characters refuse it.
Conversions are total: whatever arrives, the answer is a value or `ValueMismatch`, whose
message names the expected type and what came instead, never the value itself.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

from app.domain.models import Primitive

PropertyType = Literal["string", "number", "boolean", "date"]
PROPERTY_TYPES: tuple[PropertyType, ...] = ("string", "number", "boolean", "date")
SeenType = Literal["string", "number", "boolean", "date", "null"]
EpochUnit = Literal["s", "ms"]

MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**63 - 1
# int() refuses more than 4,300 digits; a longer numeric string is never what a caller meant.
MAX_DIGITS = 4_300
MAX_EPOCH_S = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# Below this an epoch number is seconds (every second up to the year 9999's last), from it
# milliseconds (1978-01-11T21:31:40.800Z on).
EPOCH_MS_FROM = MAX_EPOCH_S + 1

_BLANKS = " \t\n\r\x0b\x0c"
# ASCII digits only: `\d` and int() take other scripts' digits.
_NUMBER = re.compile(r"[+-]?([0-9]+)(?:\.([0-9]+))?(?:[eE][+-]?([0-9]+))?")
_DIGITS = re.compile(r"[0-9]+")
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?)?"
)
_ISO_LONGEST = len("2026-12-01T10:00:00.123456789+05:00")
_EPOCH = datetime(1970, 1, 1)  # naive: arithmetic on it stays in UTC without conversions


class ValueMismatch(ValueError):
    """A value does not convert to its declared type without loss.

    `expected` is the declared type (`number`), `got` says what came instead in a few words
    (`a string that is not a number`); neither ever holds the value.
    """

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"expected a {expected}, got {got}")
        self.expected = expected
        self.got = got


def to_type(
    value: Primitive,
    kind: PropertyType,
    *,
    epoch: EpochUnit | None = None,
    stringify: bool = False,
) -> Primitive:
    """`value` as Userpilot should receive it for a property declared `kind`.

    `epoch` is the unit of epoch numbers for a `date` when the source declares one (HubSpot
    sends milliseconds, Stripe seconds); a string of ASCII digits is then an epoch too. Without
    it epoch numbers are told apart by magnitude and a digit string is not a date.
    `stringify` lets a number or a bool become its text for a `string` property.
    Raises `ValueMismatch` when the value does not convert without loss.
    """
    if value is None:
        return None
    if kind == "string":
        return _string(value, stringify=stringify)
    if kind == "number":
        return _number(value)
    if kind == "boolean":
        return _boolean(value)
    return _date(value, epoch)


def seen_type(value: Primitive) -> SeenType:
    """The type a raw value arrived as: a string that is an ISO 8601 date counts as `date`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    try:
        return "date" if _iso_utc(value) is not None else "string"
    except ValueMismatch:  # written like a date but not one (2026-02-30)
        return "string"


def iso_from_epoch(value: int | float, unit: EpochUnit | None = None) -> str:
    """Epoch seconds or milliseconds (told apart by magnitude when `unit` is None) as ISO 8601
    UTC; refused outside 1970-01-01..9999-12-31."""
    if isinstance(value, bool):
        raise ValueMismatch("date", "a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueMismatch("date", "a number that is not finite")
    if unit is None:
        unit = "s" if value < EPOCH_MS_FROM else "ms"
    scale = 1000 if unit == "s" else 1
    if not 0 <= value <= (MAX_EPOCH_MS + 1) / scale:
        raise ValueMismatch("date", "an epoch time outside the years 1970 to 9999")
    if isinstance(value, int):
        millis = value * scale
    else:
        # The decimal the caller wrote (the float's shortest form), so 0.123 s is 123 ms.
        exact = Decimal(repr(value)) * scale
        millis = int(exact.to_integral_value(rounding=ROUND_FLOOR))
    if millis > MAX_EPOCH_MS:
        raise ValueMismatch("date", "an epoch time outside the years 1970 to 9999")
    return _format(_EPOCH + timedelta(milliseconds=millis))


# the types ------------------------------------------------------------------------------------
def _got(value: Primitive) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "a string"


def _string(value: Primitive, *, stringify: bool) -> str:
    if isinstance(value, str):
        return value
    if not stringify:
        raise ValueMismatch("string", _got(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(_integer_in_range(value, "string"))
    assert isinstance(value, float)
    if not math.isfinite(value):
        raise ValueMismatch("string", "a number that is not finite")
    return repr(value)


def _integer_in_range(value: int, kind: str) -> int:
    if not MIN_INTEGER <= value <= MAX_INTEGER:
        raise ValueMismatch(kind, "an integer outside the signed 64-bit range")
    return value


def _number(value: Primitive) -> int | float:
    if isinstance(value, bool):
        raise ValueMismatch("number", "a boolean")
    if isinstance(value, int):
        return _integer_in_range(value, "number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueMismatch("number", "a number that is not finite")
        return value
    assert isinstance(value, str)
    text = value.strip(_BLANKS)
    if len(text) < 19 and text.isascii() and text.isdigit():  # "1000": the common case
        return int(text)
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueMismatch("number", "a string that is not a number")
    whole, fraction, exponent = match.groups()
    if len(whole) + len(fraction or "") + len(exponent or "") > MAX_DIGITS:
        raise ValueMismatch("number", f"a string of more than {MAX_DIGITS:,} digits")
    if fraction is None and exponent is None:
        significant = whole.lstrip("0")
        if len(significant) > len(str(MAX_INTEGER)):  # never ask int() for more
            raise ValueMismatch("number", "an integer outside the signed 64-bit range")
        sign = -1 if text[0] == "-" else 1
        return _integer_in_range(sign * int(significant or "0"), "number")
    number = float(text)
    if not math.isfinite(number):
        raise ValueMismatch("number", "a number too large for a double")
    try:
        exact = Decimal(text) == Decimal(repr(number))
    except ArithmeticError:  # an exponent beyond what decimal compares
        exact = False
    if not exact:
        raise ValueMismatch("number", "a number with more precision than a double holds")
    return number


def _boolean(value: Primitive) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip(_BLANKS).lower()
        if text in ("true", "false"):
            return text == "true"
        raise ValueMismatch("boolean", "a string that is not true or false")
    raise ValueMismatch("boolean", "a number")


def _date(value: Primitive, unit: EpochUnit | None) -> str:
    if isinstance(value, bool):
        raise ValueMismatch("date", "a boolean")
    if isinstance(value, int | float):
        return iso_from_epoch(value, unit)
    assert isinstance(value, str)
    if unit is not None:
        text = value.strip(_BLANKS)
        if _DIGITS.fullmatch(text):
            significant = text.lstrip("0")
            if len(text) > MAX_DIGITS or len(significant) > len(str(MAX_EPOCH_MS)):
                raise ValueMismatch("date", "an epoch time outside the years 1970 to 9999")
            return iso_from_epoch(int(significant or "0"), unit)
    iso = _iso_utc(value)
    if iso is None:
        raise ValueMismatch("date", "a string that is not an ISO 8601 date")
    return iso


def _iso_utc(value: str) -> str | None:
    """An ISO 8601 date or date-time string as ISO 8601 UTC; None when it is not written as one.

    Raises `ValueMismatch` for one written as one that names no real moment (30 February,
    25:00) or leaves the years 0001..9999 once in UTC. Remembered for the last 4,096 texts of
    a date's length (never a longer value): the same dates come again and again (renewal
    dates, a day's timestamps), and both the conversion and the catalogue's `seen_type` ask.
    """
    text = value.strip(_BLANKS)
    if not 10 <= len(text) <= _ISO_LONGEST:
        return None
    return _iso_text(text)


@functools.lru_cache(maxsize=4096)
def _iso_text(text: str) -> str | None:
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
        )
    except ValueError:  # month 13, 30 February, 24:00, a leap second, year 0
        raise ValueMismatch("date", "an ISO 8601 string that names no real date or time") from None
    if sign is not None and zulu is None:
        hours, minutes = int(off_h), int(off_m or 0)
        if hours > 23 or minutes > 59:
            raise ValueMismatch("date", "an ISO 8601 string with an impossible UTC offset")
        offset = timedelta(hours=hours, minutes=minutes)
        try:
            moment = moment - offset if sign == "+" else moment + offset
        except OverflowError:
            raise ValueMismatch("date", "a date outside the years 0001 to 9999 in UTC") from None
    return _format(moment)


def _format(moment: datetime) -> str:
    """A naive UTC datetime as `YYYY-MM-DDTHH:MM:SS[.fff]Z`."""
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    millis = moment.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"
