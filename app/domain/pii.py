"""The PII guard's eyes: does a metadata value hold personal data, and of which kind?

`find_pii` looks anywhere inside a string (`"contact: bob@example.com"` is found) for:

- an email address: `local@domain.tld`, ASCII, a local part of at most 64 characters from
  `A-Z a-z 0-9 . _ % + -`, dot-separated domain labels and a last label that starts with a letter
  (`pkg@1.2.3` is not an address; `logo@2x.png` does look like one);
- a phone number in international form: `+` then 8 to 15 digits, one space, dot or dash (or a
  parenthesis: `+1 (415) 555-2671`, `+44 (0)20 7946 0958`) between digits, not glued to letters or
  to more digits. A signed number of 8 to 15 digits (`"+14155552671"`) is E.164 and is flagged;
  a local number without `+` (`(415) 555-2671`) is not;
- an IPv4 or IPv6 address that `ipaddress` accepts, except the unspecified (`0.0.0.0`, `::`)
  and loopback ones (`127.0.0.1`, `::1`), which identify nobody. A four-part version string
  is an address (`1.2.3.4`, flagged) unless a letter leads it (`v1.2.3.4`); times (`10:30:00`)
  and MAC addresses are not addresses;
- a payment card number: 13 to 19 digits, grouped by single spaces or dashes, the first group
  at least 4 digits (every printed card format starts so), the first digit 2 to 6 (the card
  networks' major industry identifiers, which keeps epoch-millisecond timestamps and most
  numeric ids out), passing the Luhn check; inside a longer run of groups too, from a group's
  start to a group's end (`4111 1111 1111 1111 123`). Digits that continue a decimal
  (`0.5488135039273248`) or touch letters are not a card. An int of 13 to 19 digits is checked
  the same way, and so is a float that is a whole number (`4111111111111111.0`).

Dates (`2026-12-01`), amounts (`1,234.56`), UUIDs and other values are not flagged. The answer
is the first kind found in the order above. Work is linear in the length: precompiled regular
expressions with no nested or overlapping quantifiers (each repetition is bounded, or repeats
a unit that consumes exactly one digit), candidates starting only where a run of their
characters starts, and at most 19 digits' worth of card windows from each group.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from app.domain.models import Primitive

PiiKind = Literal["email address", "phone number", "IP address", "payment card number"]
PII_KINDS: tuple[PiiKind, ...] = (
    "email address",
    "phone number",
    "IP address",
    "payment card number",
)

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])(?![A-Za-z0-9-])"
)
# Patterns open with the character they need (`+`, a digit) so the engine skips ahead to it;
# the look-behind right after checks what precedes that character (at the start of the text
# there is nothing, and a negative look-behind then holds).
# Between two digits: nothing, one of ` . -`, or a parenthesis with an optional blank or mark.
_GAP = r"(?:[ .-]|[ ]?\(|\)[ .-]?)?"
_PHONE = re.compile(rf"\+(?<![0-9A-Za-z_+]\+)[0-9](?:{_GAP}[0-9]){{7,14}}(?!{_GAP}[0-9]|[A-Za-z_])")
_IPV4 = re.compile(
    r"[0-9](?<![0-9A-Za-z_.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z_]|\.[0-9])"
)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{1,4})?:[0-9A-Fa-f:.]{1,44}(?![0-9A-Za-z_:.])"
)
# A run of at least 13 digits, one space or dash allowed between two of them. A run starts at
# the first digit of its sequence (a shorter sequence never matches inside itself) and ends
# at the last one (the repetition is greedy and nothing follows it), so it is found once.
_CARD_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){12,}")
_CARD_SEPARATORS = re.compile(r"[ -]")
# A date-time as the relay writes them (ISO 8601 UTC): never a card, and common.
_ISO_MOMENT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z")
_CARD_FIRST_DIGITS = frozenset("23456")
_CARD_MIN, _CARD_MAX = 13, 19
_WORD = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_ASCII_DIGITS = frozenset("0123456789")
_DECIMAL_MARKS = frozenset(".,")
# Luhn: every second digit from the right is doubled, its digits summed (7 -> 14 -> 5).
_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def find_pii(value: Primitive) -> PiiKind | None:
    """The kind of personal data `value` holds, or None; never raises."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):  # 4111111111111111.0 is exact: every card is below 2**53
        if not (value.is_integer() and 10 ** (_CARD_MIN - 1) <= value < 10**_CARD_MAX):
            return None
        value = int(value)
    if isinstance(value, int):
        text = str(value) if 10 ** (_CARD_MIN - 1) <= value < 10**_CARD_MAX else ""
        return "payment card number" if text and _is_card(text) else None
    if not ("@" in value or "+" in value or "." in value or ":" in value):
        # Most values: without these no email, phone or IP address can be there; a card still
        # can (only digits, spaces and dashes).
        if len(value) >= _CARD_MIN and _has_card(value):
            return "payment card number"
        return None
    if "@" in value and _EMAIL.search(value):
        return "email address"
    if "+" in value and _PHONE.search(value):
        return "phone number"
    if _has_ip(value):
        return "IP address"
    if len(value) >= _CARD_MIN and not _ISO_MOMENT.fullmatch(value) and _has_card(value):
        return "payment card number"
    return None


def luhn_valid(digits: str) -> bool:
    """True when the ASCII digit string passes the Luhn (mod 10) check."""
    data = digits.encode("ascii")[::-1]
    total = sum(data[0::2]) + sum(data[1::2].translate(_DOUBLED)) - 48 * len(data)
    return total % 10 == 0


def _is_card(digits: str) -> bool:
    return (
        _CARD_MIN <= len(digits) <= _CARD_MAX
        and digits[0] in _CARD_FIRST_DIGITS
        and luhn_valid(digits)
    )


def _has_card(text: str) -> bool:
    if _CARD_RUN.search(text) is None:  # most text: no run of 13 digits at all
        return False
    for match in _CARD_RUN.finditer(text):
        groups = _CARD_SEPARATORS.split(match.group())
        start, end = match.span()
        # A group touching a letter, or continuing a decimal (`0.5488135039273248`), is part
        # of something else: the card may only start or end at the groups inside.
        if _glued(text[max(start - 2, 0) : start][::-1]):
            groups = groups[1:]
        if _glued(text[end : end + 2]):
            groups = groups[:-1]
        if _card_in_groups(groups):
            return True
    return False


def _glued(outward: str) -> bool:
    """Whether the (up to) two characters beyond a run's end, nearest first, continue it."""
    near, far = outward[:1], outward[1:]
    return near in _WORD or (near in _DECIMAL_MARKS and far in _ASCII_DIGITS)


def _card_in_groups(groups: list[str]) -> bool:
    """A card number from a group's start to a later group's end."""
    for start, first in enumerate(groups):
        if len(first) < 4 or first[0] not in _CARD_FIRST_DIGITS:
            continue
        digits = ""
        for index in range(start, len(groups)):
            digits += groups[index]
            if len(digits) > _CARD_MAX:
                break
            if len(digits) >= _CARD_MIN and luhn_valid(digits):
                return True
    return False


def _has_ip(text: str) -> bool:
    if "." in text:
        for match in _IPV4.finditer(text):
            if _personal(match.group(), ipaddress.IPv4Address):
                return True
    # An IPv6 address has `::` or at least six colons (times and ISO dates have two).
    if "::" in text or text.count(":") >= 6:
        for match in _IPV6.finditer(text):
            if _personal(match.group().rstrip("."), ipaddress.IPv6Address):
                return True
    return False


def _personal(
    candidate: str, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> bool:
    try:
        address = kind(candidate)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_loopback)
