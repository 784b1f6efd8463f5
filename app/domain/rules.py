"""Rules every path shares about what a company id and a property name may be.

The ground floor: imported by routes, sources and stores alike, importing nothing of the app.
Both stores hold exactly what passes here (PostgreSQL text cannot hold NUL, and a control
character in an id or a name is never what a caller meant).
"""

from __future__ import annotations

import re

MAX_COMPANY_ID = 255
MAX_PROPERTY_NAME = 255  # Userpilot's limit on a property name
# C0 and C1 controls (NUL included), DEL, and the Unicode line and paragraph separators.
# Values may hold them: they are stored as JSON escapes.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def has_control(text: str) -> bool:
    """True when `text` holds a control character (NUL, tab, newline...), DEL or U+2028/9."""
    # isprintable() is one C loop and true for nearly every real id and name: the regular
    # expression runs only for the rare text it cannot clear.
    return not text.isprintable() and _CONTROL.search(text) is not None


def company_id_problem(company_id: str) -> str | None:
    """Why `company_id` cannot be a Userpilot company id, or None when it can."""
    if not company_id or not company_id.strip():
        return "must not be blank"
    if len(company_id) > MAX_COMPANY_ID:
        return f"must be at most {MAX_COMPANY_ID} characters"
    if has_control(company_id):
        return "must not contain control characters (NUL, tab, newline...)"
    return None


def property_name_problem(name: str) -> str | None:
    """Why `name` cannot be a metadata property name, or None when it can."""
    if not name or not name.strip():
        return "property names must not be empty"
    if len(name) > MAX_PROPERTY_NAME:
        return f"property names must be at most {MAX_PROPERTY_NAME} characters"
    if has_control(name):
        return "property names must not contain control characters (NUL, tab, newline...)"
    return None


def parse_ascii_int(text: str, *, maximum: int = 2**63 - 1) -> int | None:
    """`text` as a non-negative integer when it is plain ASCII digits within `maximum`.

    `str.isdigit()` accepts characters such as '²' that `int()` refuses, and `int()` accepts
    '٣' and surrounding blanks: neither is a number a caller meant here.
    """
    if len(text) > len(str(maximum)) or not _ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


# A delivery the relay itself refused (it could not be stored or sent as given): dead-lettered
# with this prefix in its error, never replayed (replaying would send something else).
REFUSED = "refused by the relay: "


def update_problem(company_id: object, metadata: object) -> str | None:
    """Why a stored (company_id, metadata) pair cannot be sent as it is, or None."""
    if not isinstance(company_id, str):
        return "company_id: must be a string"
    problem = company_id_problem(company_id)
    if problem is not None:
        return f"company_id: {problem}"
    if not isinstance(metadata, dict):
        return "metadata: must be an object"
    for key in metadata:
        problem = property_name_problem(key) if isinstance(key, str) else "must be a string"
        if problem is not None:
            return f"metadata: {problem}"
    return None


def printable(text: object, limit: int = MAX_COMPANY_ID) -> str:
    """`text` with control characters replaced, cut to `limit`: safe for any store column."""
    return _CONTROL.sub("\ufffd", str(text))[:limit] or "\ufffd"
