"""The PII guard's eyes: does a value, a property name or a company id hold personal data?

`find_pii(value, key=...)` looks anywhere inside a string (`"contact: bob@example.com"` is
found). Each kind asks for the evidence that tells it from ordinary data; the rules, and why,
are in docs/security.md ("What the PII guard looks for"), measured in
tests/unit/test_values_pii.py:

- an email address: a local part of at most 64 letters (any script), digits or `._%+'-`, `@`,
  dot-separated domain labels (any script: `bob@bücher.de`) and a last label that starts with a
  letter. Not an address: an SSH remote (`git@github.com:acme/x.git`, `ssh://git@host/...`);
- a phone number in international form: `+` then 8 to 15 digits, up to three separators
  (space, no-break or narrow no-break space, `.`, `-`, `/`, en or em dash) or a parenthesis
  between digits, an optional extension (`x12`, `ext. 12`), not glued to letters or more digits;
- an IP address that is public: IPv4 outside the private (10/8, 172.16/12, 192.168/16), shared
  (100.64/10), loopback, link-local, `0/8`, benchmarking, multicast and reserved ranges, and not
  version-like (four single digits such as `1.2.3.4`, or after `v`/`version`/`build`/...);
  IPv6 in global unicast (`2000::/3`), an IPv4-mapped one by the IPv4 rule. So `fe80::1`,
  `Ad::Feed` (a constant), EUI-64 and MAC addresses are not addresses;
- a payment card number: a brand's prefix and length (Visa, Mastercard, Amex, Discover, Diners,
  JCB, UnionPay, Maestro, Mir) passing Luhn, AND evidence that it is a card: printed in groups
  (`4111 1111 1111 1111`, `3782 822463 10005`; space, no-break space, `-`, `.` or `/` between
  groups), or a card word in the value or the property name (`card`, `cc`, `visa`...). A bare
  run of digits with none (`4539578763621486` as an id, one in ten of which passes Luhn) is not.

Work is linear in the length: precompiled regular expressions with no nested unbounded
quantifiers, candidates starting only where a run of their characters starts, and bounded
windows per candidate; values longer than `MAX_VALUE` are refused before they get here.
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
# Userpilot keeps string values of at most 65,535 characters: longer ones are refused (API) or
# dropped (webhooks, backfills) before the guard, which keeps its cost per value bounded.
MAX_VALUE = 65_535

_EMAIL = re.compile(
    r"(?<![\w.%+'-])[\w.%+'-]{1,64}"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+"
    r"[^\W\d_](?:[\w-]{0,61}[^\W_])(?![\w-])"
)
# `user@host:path` (scp syntax) and `ssh://user@host`: a login on a host, not a mailbox.
_SSH_AFTER = re.compile(r":[^\s:]")
_SSH_BEFORE = re.compile(r"(?:ssh|git\+ssh|git|sftp|scp)://\Z", re.IGNORECASE)

# Separators people type between digits: space, no-break (U+00A0), thin (U+2009), narrow
# no-break (U+202F), `.`, `-`, `/`, hyphen and dash characters (U+2010-U+2014).
_SEP = "[ .\\-/\u00a0\u2009\u202f\u2010-\u2014]"
# Between two digits of a phone number: up to three separators (`+1 415 \u2013 555`, double
# spaces), or a parenthesis with an optional separator on its outside.
_GAP = rf"(?:{_SEP}{{1,3}}|{_SEP}?\(|\){_SEP}?)?"
_EXTENSION = rf"(?:{_SEP}{{0,2}}(?:[xX]|[eE][xX][tT]\.?){_SEP}{{0,2}}[0-9]{{1,6}})?"
_PHONE = re.compile(
    rf"\+(?<![0-9A-Za-z_+]\+)[0-9](?:{_GAP}[0-9]){{7,14}}{_EXTENSION}"
    rf"(?!{_GAP}[0-9]|[A-Za-z_])"
)
_IPV4 = re.compile(
    r"[0-9](?<![0-9A-Za-z_.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z_]|\.[0-9])"
)
_VERSION_BEFORE = re.compile(r"(?:version|release|build|ver|rev)[ .:=_-]{0,2}\Z", re.IGNORECASE)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{1,4})?:[0-9A-Fa-f:.]{1,44}(?![0-9A-Za-z_:.])"
)
# A card as it is printed, tried at the start of every group (a look-ahead, so overlapping):
# 4-4-4 then 1 to 4 digits (13 to 16), or 4-6-5 and 4-6-4 (Amex, Diners), one separator
# throughout, and the 17th to 19th digits of a 4-4-4-4-3 card when they follow; not glued to
# a word, nor continuing a decimal (`0.5488 1350 3927 3248`).
_CARD_SEP = "[ .\\-/\u00a0\u202f\u2013]"
_CARD_PRINTED = re.compile(
    rf"([2-6])(?<![\w.,][2-6])(?<![0-9][.,][2-6])(?=([0-9]{{3}}({_CARD_SEP})"
    rf"(?:[0-9]{{4}}\3[0-9]{{4}}\3[0-9]{{1,4}}|[0-9]{{6}}\3[0-9]{{4,5}}))"
    rf"(?:\3([0-9]{{1,3}}))?(?!\w|[.,][0-9]))"
)
# A bare run: a card only with a card word about.
_CARD_BARE = re.compile(r"[2-6](?<![\w.,][2-6])(?<![0-9][.,][2-6])[0-9]{12,18}(?!\w|[.,][0-9])")
_CARD_WORDS = re.compile(
    r"card|credit|debit|visa|master ?card|amex|american express|discover|maestro|unionpay"
    r"|(?<![a-z])(?:cc|pan)(?![a-z])",
    re.IGNORECASE,
)
_CARD_MIN, _CARD_MAX = 13, 19
# Luhn: every second digit from the right is doubled, its digits summed (7 -> 14 -> 5).
_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
# Brands: (lowest prefix, highest prefix, lengths), prefixes of the same number of digits.
_ANY = frozenset(range(16, 20))
_CARD_FIRST_DIGITS = frozenset("23456")
_BRAND_TABLE: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, _ANY),  # Discover
    (644, 649, _ANY),
    (65, 65, _ANY),
    (300, 305, frozenset({14, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 16, 17, 18, 19})),
    (38, 39, frozenset({16, 17, 18, 19})),
    (3528, 3589, _ANY),  # JCB
    (62, 62, _ANY),  # UnionPay (and Discover's co-branded range)
    (5018, 5018, frozenset(range(13, 20))),  # Maestro
    (5020, 5020, frozenset(range(13, 20))),
    (5038, 5038, frozenset(range(13, 20))),
    (5893, 5893, frozenset(range(13, 20))),
    (6304, 6304, frozenset(range(13, 20))),
    (6759, 6759, frozenset(range(13, 20))),
    (6761, 6763, frozenset(range(13, 20))),
    (2200, 2204, _ANY),  # Mir
)
# (low, high, divisor taking a 4-digit prefix to the brand's, lengths)
_BRANDS = tuple((low, high, 10 ** (4 - len(str(low))), n) for low, high, n in _BRAND_TABLE)
# IPv4 ranges that identify no one outside a private network or are not addresses at all.
_NOT_PUBLIC_V4: tuple[tuple[int, int], ...] = tuple(
    (int.from_bytes(bytes(start), "big"), int.from_bytes(bytes(start), "big") + 2 ** (32 - bits))
    for start, bits in (
        ((0, 0, 0, 0), 8),  # "this network"
        ((10, 0, 0, 0), 8),  # private
        ((100, 64, 0, 0), 10),  # shared (carrier-grade NAT)
        ((127, 0, 0, 0), 8),  # loopback
        ((169, 254, 0, 0), 16),  # link-local
        ((172, 16, 0, 0), 12),  # private
        ((192, 0, 0, 0), 24),  # protocol assignments
        ((192, 168, 0, 0), 16),  # private
        ((198, 18, 0, 0), 15),  # benchmarking
        ((224, 0, 0, 0), 4),  # multicast
        ((240, 0, 0, 0), 4),  # reserved, and the broadcast address
    )
)


def find_pii(value: Primitive, key: str | None = None) -> PiiKind | None:
    """The kind of personal data `value` (of property `key`, when known) holds, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):  # 4111111111111111.0 is exact: every card is below 2**53
        if not (value.is_integer() and 10 ** (_CARD_MIN - 1) <= value < 10**_CARD_MAX):
            return None
        value = int(value)
    if isinstance(value, int):
        # A number has no grouping: it is a card only when its property says so.
        if 10 ** (_CARD_MIN - 1) <= value < 10**_CARD_MAX and key and card_name(key):
            return "payment card number" if _is_card(str(value)) else None
        return None
    if not ("@" in value or "+" in value or "." in value or ":" in value):
        # Most values: without these no email, phone or IP address can be there; a card still
        # can (only digits and separators).
        if len(value) >= _CARD_MIN and _has_card(value, key):
            return "payment card number"
        return None
    if "@" in value and _has_email(value):
        return "email address"
    if "+" in value and _PHONE.search(value):
        return "phone number"
    if _has_ip(value):
        return "IP address"
    if len(value) >= _CARD_MIN and _has_card(value, key):
        return "payment card number"
    return None


def card_name(key: str) -> bool:
    """Whether a property's name says it holds a card number (`card_number`, `cc`, `pan`)."""
    return _CARD_WORDS.search(key.replace("_", " ")) is not None


def luhn_valid(digits: str) -> bool:
    """True when the ASCII digit string passes the Luhn (mod 10) check."""
    data = digits.encode("ascii")[::-1]
    total = sum(data[0::2]) + sum(data[1::2].translate(_DOUBLED)) - 48 * len(data)
    return total % 10 == 0


def card_brand(digits: str) -> bool:
    """Whether `digits` starts with a card brand's prefix and has one of its lengths."""
    length, prefix = len(digits), int(digits[:4])
    for low, high, scale, lengths in _BRANDS:
        if low <= prefix // scale <= high and length in lengths:
            return True
    return False


def _is_card(digits: str) -> bool:
    return (
        _CARD_MIN <= len(digits) <= _CARD_MAX
        and digits[0] in _CARD_FIRST_DIGITS
        and luhn_valid(digits)
        and card_brand(digits)
    )


def _has_email(text: str) -> bool:
    for match in _EMAIL.finditer(text):
        start, end = match.span()
        if _SSH_AFTER.match(text, end) or _SSH_BEFORE.search(text, max(start - 10, 0), start):
            continue
        return True
    return False


def _has_card(text: str, key: str | None) -> bool:
    # findall and a set: a long value that repeats itself costs one check per distinct number.
    for first, rest, separator, tail in set(_CARD_PRINTED.findall(text)):
        digits = first + rest.replace(separator, "")
        if _is_card(digits) or (tail and _is_card(digits + tail)):
            return True
    bare = [digits for digits in set(_CARD_BARE.findall(text)) if _is_card(digits)]
    # A bare run of digits is a card only with a card word about.
    return bool(bare) and (bool(key and card_name(key)) or _CARD_WORDS.search(text) is not None)


def _has_ip(text: str) -> bool:
    if "." in text:
        public: dict[str, bool] = {}  # a long value repeats itself: each address parsed once
        for match in _IPV4.finditer(text):
            candidate = match.group()
            if len(candidate) == 7:
                continue  # four single digits (1.2.3.4): a version
            known = public.get(candidate)
            if known is None:
                known = public[candidate] = _public_v4(candidate.split("."))
            start = match.start()
            if known and not _VERSION_BEFORE.search(text, max(start - 10, 0), start):
                return True
    # An IPv6 address has `::` or at least six colons (times and ISO dates have two).
    if "::" in text or text.count(":") >= 6:
        for candidate in set(_IPV6.findall(text)):
            if _public_v6(candidate.rstrip(".")):
                return True
    return False


def _public_v4(parts: list[str]) -> bool:
    if any(len(p) > 1 and p[0] == "0" for p in parts):
        return False  # leading zeros: not how an address is written
    numbers = [int(p) for p in parts]
    if any(n > 255 for n in numbers):
        return False
    address = (numbers[0] << 24) | (numbers[1] << 16) | (numbers[2] << 8) | numbers[3]
    return not any(low <= address < high for low, high in _NOT_PUBLIC_V4)


def _public_v6(candidate: str) -> bool:
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    mapped = address.ipv4_mapped
    if mapped is not None:
        return _public_v4(str(mapped).split("."))
    return (address.packed[0] & 0xE0) == 0x20  # 2000::/3, global unicast
