"""`Prefer` as RFC 7240 reads it, answered in process over the real app on both stores,
delivering to the bundled simulator; and no redirect for a trailing slash. The parsing itself:
tests/unit/test_prefer_parsing.py."""

from __future__ import annotations

from app.api.prefer import MAX_WAIT_SECONDS
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY, INGEST_KEY


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
