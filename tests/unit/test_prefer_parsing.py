"""`Prefer` parsed as RFC 7240 reads it (every header, comma-separated preferences, parameters,
names in any case, the first occurrence winning, `wait` in delta-seconds only); Retry-After
beside it. The answers over the real app: tests/integration/test_prefer.py."""

from __future__ import annotations

import pytest

from app.api.companies import parse_wait
from app.api.prefer import MAX_WAIT_SECONDS, preferences, wait_seconds
from app.userpilot.client import parse_retry_after


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([], None),
        (["wait=5"], 5),
        (["respond-async, wait=5"], 5),
        (["respond-async", "wait=7"], 7),  # several headers
        (["WAIT=4"], 4),
        (["Wait = 4"], 4),  # BWS around "="
        (['wait="6"'], 6),  # a quoted-string word
        (["wait=3; foo=bar"], 3),  # its parameters are read past
        (['handling=lenient; x="a,b", wait=2'], 2),  # a comma inside a quoted string
        (["wait=2", "wait=9"], 2),  # the first occurrence wins, across headers
        (["wait=2, wait=9"], 2),
        (["wait=1e2, wait=5"], None),  # the first is not understood: ignored, not the second
        (["wait=0"], 0),
        (["wait=007"], 7),
        (["wait=100"], MAX_WAIT_SECONDS),
        (["wait=" + "9" * 5000], MAX_WAIT_SECONDS),  # too long for int(): still capped
        (["wait=1e2"], None),
        (["wait=-1"], None),
        (["wait=1.5"], None),
        (["wait=+5"], None),
        (["wait=\uff15"], None),  # a fullwidth five
        (["wait=\u0665"], None),  # an Arabic-Indic five
        (["wait=5x"], None),
        (["wait="], None),
        (["wait"], None),
        (['wait="5'], None),  # an unterminated quoted string
        (["respond-async; wait=5"], None),  # a parameter of respond-async, not a preference
        (["return=minimal"], None),
        (["w ait=5"], None),
        ([""], None),
    ],
)
def test_wait_seconds(headers: list[str], seconds: int | None) -> None:
    assert wait_seconds(headers) == seconds


def test_preferences_are_named_in_lower_case_with_their_first_value() -> None:
    found = preferences(['Respond-Async, RETURN=minimal; x=1, wait="5"', "return=representation"])
    assert found == {"respond-async": None, "return": "minimal", "wait": "5"}


def test_parse_wait_and_retry_after() -> None:
    assert parse_wait(None) is None
    assert parse_wait("wait=5") == 5
    assert parse_wait("respond-async, wait=100") == 30
    assert parse_wait("return=minimal") is None
    assert parse_retry_after("3") == 3
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
