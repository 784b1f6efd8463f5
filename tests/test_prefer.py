"""`Prefer` as RFC 7240 reads it (every header, comma-separated preferences, parameters, names
in any case, the first occurrence winning, `wait` in delta-seconds only), and no redirect for
a trailing slash. Parsing as units; the answers in process over the real app, on both stores,
delivering to the bundled simulator."""

from __future__ import annotations

import pytest

from app.api.prefer import MAX_WAIT_SECONDS, preferences, wait_seconds
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY, INGEST_KEY

# --- parsing ----------------------------------------------------------------------------------


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


# --- in process -------------------------------------------------------------------------------


def test_prefer_is_read_as_rfc_7240_on_both_request_paths(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Applied: 200 (delivered) with `Preference-Applied: wait=N`; ignored: 202 at once, queued,
    without the header."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            n = 0

            async def post(prefer: list[str], *, route: bool) -> tuple[int, str | None, str]:
                nonlocal n
                n += 1
                headers = [(b"authorization", f"Bearer {INGEST_KEY}".encode())]
                headers += [(b"prefer", value.encode()) for value in prefer]  # UTF-8 on the wire
                if route:  # the documented route, not the fast lane
                    headers.append((b"idempotency-key", f"prefer-{n}".encode()))
                r = await relay.client.post(
                    "/companies",
                    json={"company_id": f"prefer-{n}", "metadata": {"n": n}},
                    headers=headers,
                )
                return r.status_code, r.headers.get("preference-applied"), r.json()["status"]

            for route in (False, True):
                applied = [
                    (["respond-async, wait=5"], "wait=5"),
                    (["respond-async", "wait=5"], "wait=5"),
                    (["WAIT=4"], "wait=4"),
                    (["wait=3; foo=bar"], "wait=3"),
                    (['wait="6"'], "wait=6"),
                    (["wait=2", "wait=9"], "wait=2"),
                    (["wait=100"], f"wait={MAX_WAIT_SECONDS}"),
                ]
                for prefer, header in applied:
                    assert await post(prefer, route=route) == (200, header, "delivered"), prefer
                ignored = [
                    ["wait=1e2"],
                    ["wait=-1"],
                    ["wait=1.5"],
                    ["wait=\uff15"],
                    ["wait=1e2, wait=5"],
                    ["respond-async; wait=5"],
                ]
                for prefer in ignored:
                    assert await post(prefer, route=route) == (202, None, "queued"), prefer

    run(main())


def test_a_trailing_slash_is_a_404_never_a_redirect(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for method, path, key in [
                ("POST", "/companies/", INGEST_KEY),
                ("POST", "/companies/bulk/", INGEST_KEY),
                ("GET", "/deliveries/", ADMIN_KEY),
                ("GET", "/status/", ADMIN_KEY),
            ]:
                kwargs = {"json": {"company_id": "slash"}} if method == "POST" else {}
                headers = {"Host": "evil.example", "X-Forwarded-Proto": "https"}
                r = await relay.request(method, path, key=key, headers=headers, **kwargs)
                assert r.status_code == 404, (path, r.status_code, r.headers)
                assert "location" not in r.headers
                assert r.json()["error"] == "not_found"
                assert "end without a slash" in r.json()["message"]
                assert "evil.example" not in r.text
            assert (await relay.store.deliveries.stats()).queued == 0
            assert (await relay.post("/companies", json={"company_id": "ok"})).status_code == 202

    run(main())
