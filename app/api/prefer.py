"""The `Prefer` request header as RFC 7240 reads it, and its one preference the relay honours.

Every `Prefer` header counts, each a comma-separated list of preferences
(`Prefer: respond-async, wait=5`); a preference is a token, optionally `=` a token or a
quoted string, then `;`-separated parameters (read past: the relay honours none). Names are
case-insensitive, and only the first occurrence of a preference counts (RFC 7240 section 2).
`wait` takes delta-seconds, ASCII digits only: `wait=1e2`, `wait=-1`, `wait=1.5` and a wait in
other digits (fullwidth, Arabic-Indic) are preferences the relay does not understand, and
ignores, as the RFC asks; a wait applied is answered `Preference-Applied: wait=N`.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.domain.rules import parse_ascii_int

MAX_WAIT_SECONDS = 30

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def preferences(headers: Iterable[str]) -> dict[str, str | None]:
    """Each preference's value (None without one) by its lower-cased name, first one winning;
    a malformed preference is skipped."""
    found: dict[str, str | None] = {}
    for header in headers:
        for item in _split(header, ","):
            head = _split(item, ";", limit=1)[0] if ";" in item else item
            name, equals, word = head.partition("=")
            name = name.strip(" \t")
            if not name or not _TCHARS.issuperset(name):
                continue
            name = name.lower()
            if name in found:
                continue
            value = _word(word.strip(" \t")) if equals else None
            if equals and value is None:
                found[name] = ""  # there, but its value unreadable: it still came first
                continue
            found[name] = value
    return found


def wait_seconds(headers: Iterable[str]) -> int | None:
    """The seconds of a `wait` preference, capped at MAX_WAIT_SECONDS; None when there is none
    or the first is not delta-seconds."""
    value = preferences(headers).get("wait")
    if not value:
        return None
    seconds = parse_ascii_int(value)
    if seconds is None:
        # Digits too many for an int are still delta-seconds: capped.
        return MAX_WAIT_SECONDS if value.isascii() and value.isdigit() else None
    return min(seconds, MAX_WAIT_SECONDS)


def _word(text: str) -> str | None:
    """A token or a quoted string's content; None when it is neither."""
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            return None
        inner, out, escaped = text[1:-1], [], False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return None
            else:
                out.append(char)
        return None if escaped else "".join(out)
    return text if text and _TCHARS.issuperset(text) else None


def _split(text: str, separator: str, *, limit: int = -1) -> list[str]:
    """`text` split at `separator` outside quoted strings."""
    if '"' not in text:
        return text.split(separator, limit)
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted and limit != len(parts):
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts
