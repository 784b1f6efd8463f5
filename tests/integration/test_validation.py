"""Every validation rule of PRODUCT.md, in process over the real app: bad input gets a clear
error naming the field and stores nothing; good input reaches Userpilot unmangled (null kept).

Refusals happen before any store is touched, so they run on SQLite only; what a store keeps
and gives back (values, batches) runs on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY, INGEST_KEY

INVALID_COMPANIES: list[tuple[dict[str, Any], str]] = [
    ({"metadata": {}}, "company_id"),
    ({"company_id": "", "metadata": {}}, "company_id"),
    ({"company_id": "   ", "metadata": {}}, "company_id"),
    ({"company_id": 42, "metadata": {}}, "company_id"),
    ({"company_id": None, "metadata": {}}, "company_id"),
    ({"company_id": "a", "metadata": {"address": {"city": "Oslo"}}}, "metadata.address"),
    ({"company_id": "a", "metadata": {"tags": ["a", "b"]}}, "metadata.tags"),
    ({"company_id": "a", "metadata": []}, "metadata"),
    ({"company_id": "a", "metadata": "plan=pro"}, "metadata"),
    ({"companyId": "a", "metadata": {}}, "companyId"),
    ({"company_id": "a", "metadata": {}, "extra": 1}, "extra"),
]


async def stored(relay: InProcessRelay) -> int:
    """How many updates the store holds: every delivery listed, plus the items of stored
    batches not yet expanded into deliveries (which the listing cannot show)."""
    r = await relay.get("/deliveries?limit=1000", key=ADMIN_KEY)
    assert r.status_code == 200
    listed = r.json()["items"]
    stats = await relay.store.deliveries.stats()
    listed_queued = sum(1 for d in listed if d["status"] == "queued")
    return len(listed) + stats.queued - listed_queued


def test_invalid_company_is_422_naming_the_field(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for body, field in INVALID_COMPANIES:
                r = await relay.post("/companies", json=body)
                assert r.status_code == 422, (body, r.text)
                assert field in [e["field"] for e in r.json()["errors"]], (body, r.text)
            assert await stored(relay) == 0

    run(main())


def test_nan_and_infinities_are_rejected_with_the_key(sqlite_url: str) -> None:
    literals = ["NaN", "Infinity", "-Infinity", "1e400", "123456789012345678901234567890"]

    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for literal in literals:
                raw = f'{{"company_id": "a", "metadata": {{"ok": 1, "mrr": {literal}}}}}'
                r = await relay.post(
                    "/companies", content=raw, headers={"Content-Type": "application/json"}
                )
                assert r.status_code == 422, (literal, r.text)
                assert [e["field"] for e in r.json()["errors"]] == ["metadata.mrr"], literal
            assert await stored(relay) == 0

    run(main())


def test_malformed_json_is_422(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            r = await relay.post(
                "/companies",
                content=b'{"company_id": ',
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 422
            assert r.json()["error"] == "invalid_payload"
            assert await stored(relay) == 0

    run(main())


def test_non_json_content_type_is_415(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"Content-Type": content_type} if content_type else {}
                r = await relay.post("/companies", content=b'{"company_id":"a"}', headers=headers)
                assert r.status_code == 415, (content_type, r.text)
            assert await stored(relay) == 0

    run(main())


def test_body_over_the_limit_is_413(sqlite_url: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"company_id": "a", "metadata": {"notes": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}}'

    async def main() -> None:
        async with InProcessRelay(sqlite_url, relay_max_body_bytes=1024) as relay:
            big = {"company_id": "a", "metadata": {"notes": "x" * 2000}}
            r = await relay.post("/companies", json=big)
            assert r.status_code == 413
            assert "1024" in r.json()["message"]
            # Chunked, with no Content-Length: refused while reading, not after.
            r = await relay.post(
                "/companies", content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert "content-length" not in r.request.headers
            assert r.status_code == 413
            assert await stored(relay) == 0

    run(main())


def test_valid_values_reach_userpilot_unmangled(database_url: str, sim: SimulatorProcess) -> None:
    # Both stores: each keeps the metadata in its own way (JSON text, JSONB) and must give it
    # back exactly, null, floats, big integers and all.
    metadata = {
        "name": "Acme",
        "seats": 42,
        "mrr": 1234.5,
        "active": True,
        "churned": False,
        "removed": None,
        "renewal": "2027-01-31",
        "unicode": "Zürich ✓",
        "big": 10**15,
    }

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            r = await relay.post_company("acme", metadata, headers={"Prefer": "wait=10"})
            assert r.status_code == 200, r.text

    run(main())
    (call,) = sim.requests(path="/v1/companies/identify")
    assert call["body"] == {"company_id": "acme", "metadata": metadata}


def test_metadata_may_be_omitted(sqlite_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url, endpoint=sim.url) as relay:
            r = await relay.post(
                "/companies", json={"company_id": "bare"}, headers={"Prefer": "wait=10"}
            )
            assert r.status_code == 200, r.text

    run(main())
    assert sim.requests(path="/v1/companies/identify")[0]["body"] == {
        "company_id": "bare",
        "metadata": {},
    }


def test_bulk_is_all_or_nothing_and_names_indexes(sqlite_url: str) -> None:
    companies: list[dict[str, Any]] = [
        {"company_id": f"c{i}", "metadata": {"n": i}} for i in range(50)
    ]
    companies[7]["metadata"]["bad"] = {"nested": True}
    companies[31] = {"company_id": "", "metadata": {}}
    companies[40]["typo"] = 1

    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            r = await relay.post("/companies/bulk", json={"companies": companies})
            assert r.status_code == 422, r.text
            fields = {e["field"] for e in r.json()["errors"]}
            assert fields == {
                "companies[7].metadata.bad",
                "companies[31].company_id",
                "companies[40].typo",
            }
            assert await stored(relay) == 0

    run(main())


def test_bulk_shape_errors(sqlite_url: str) -> None:
    bodies: list[dict[str, Any]] = [
        {"companies": []},
        {"companies": {}},
        {},
        {"companies": [], "x": 1},
    ]

    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for body in bodies:
                r = await relay.post("/companies/bulk", json=body)
                assert r.status_code == 422, (body, r.text)
                assert r.json()["errors"][0]["field"].startswith(("companies", "x")), r.text
            assert await stored(relay) == 0

    run(main())


def test_bulk_over_10000_items_is_422(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            body = {"companies": [{"company_id": f"c{i}"} for i in range(10_001)]}
            r = await relay.post("/companies/bulk", json=body)
            assert r.status_code == 422
            assert r.json()["errors"][0]["field"] == "companies"
            assert await stored(relay) == 0

    run(main())


def test_bulk_accepts_and_counts(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url, endpoint=sim.url, relay_rate_limit_per_minute=6000
        ) as relay:
            body = {"companies": [{"company_id": f"b{i}", "metadata": {"n": i}} for i in range(25)]}
            r = await relay.post("/companies/bulk", json=body)
            assert r.status_code == 202, r.text
            batch = r.json()
            assert batch["accepted"] == 25
            status = (await relay.get(f"/batches/{batch['batch_id']}")).json()
            assert status["total"] == 25
            assert sum(status["counts"].values()) == 25
            final = await relay.batch_done(batch["batch_id"])
            assert final["counts"]["delivered"] == 25

    run(main())
    assert sim.company("b24") == {"n": 24}
    assert len(sim.companies()) == 25


def test_unknown_ids_are_404(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            assert (await relay.get("/deliveries/nope")).status_code == 404
            assert (await relay.get("/batches/nope")).status_code == 404
            r = await relay.post("/deliveries/nope/replay", key=ADMIN_KEY)
            assert r.status_code == 404
            assert r.json()["error"] == "not_found"

    run(main())


def test_every_bulk_item_is_readable_at_once(database_url: str) -> None:
    # Nothing is delivered (the endpoint is a closed port): every item must be readable from
    # the moment the bulk is acknowledged, however the store stages it.
    async def main() -> None:
        async with InProcessRelay(database_url, relay_rate_limit_per_minute=60) as relay:
            body = {
                "companies": [{"company_id": f"s{i}", "metadata": {"i": i}} for i in range(3000)]
            }
            batch = (await relay.post("/companies/bulk", json=body)).json()["batch_id"]
            last = await relay.get(f"/deliveries/{batch}.2999")
            assert last.status_code == 200, last.text
            assert last.json()["status"] == "queued"
            assert last.json()["company_id"] == "s2999"
            assert (await relay.get(f"/deliveries/{batch}.3000")).status_code == 404
            counts = (await relay.get(f"/batches/{batch}")).json()["counts"]
            assert sum(counts.values()) == 3000

    run(main())


def test_with_or_without_idempotency_key_the_answers_are_the_same(sqlite_url: str) -> None:
    """A POST /companies without Idempotency-Key and one with it take the one request path: the
    same input gets the same status, body and challenge either way."""
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str | None, dict[str, str], bytes]] = [
        (INGEST_KEY, json_type, b'{"company_id": "", "metadata": {}}'),
        (INGEST_KEY, json_type, b"{not json"),
        (INGEST_KEY, {"Content-Type": "text/plain"}, b"{}"),
        (INGEST_KEY, json_type, b'{"company_id": "a", "metadata": {"c": "ap@acme.example"}}'),
        (ADMIN_KEY, json_type, b'{"company_id": "a", "metadata": {}}'),  # the wrong role
        (None, json_type, b'{"company_id": "a", "metadata": {}}'),
        ("not-a-key", json_type, b'{"company_id": "a", "metadata": {}}'),
    ]

    async def main() -> list[list[tuple[int, Any, str | None]]]:
        async with InProcessRelay(sqlite_url) as relay:
            seen = []
            for n, (key, headers, body) in enumerate(cases):
                answers = []
                for extra in ({}, {"Idempotency-Key": f"case-{n}"}):
                    r = await relay.post(
                        "/companies", key=key, content=body, headers={**headers, **extra}
                    )
                    answers.append((r.status_code, r.json(), r.headers.get("www-authenticate")))
                seen.append(answers)
            return seen

    for fast, route in run(main()):
        assert fast == route
        assert fast[0] >= 400


# --- hostile characters, ids and query parameters (from the adversarial review) ------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"company_id": "pg-nul\u0000y"}, "company_id"),
        ({"company_id": "tab\there"}, "company_id"),
        ({"company_id": "ok", "metadata": {"k\u0000": 1}}, "metadata.k\u0000"),
        ({"company_id": "ok", "metadata": {"line\nbreak": 1}}, "metadata.line\nbreak"),
    ],
)
def test_control_characters_in_ids_and_names_are_refused(
    database_url: str, body: dict[str, Any], field: str
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            single = await relay.post("/companies", json=body)
            assert single.status_code == 422, single.text
            assert [e["field"] for e in single.json()["errors"]] == [field]
            bulk = await relay.post(
                "/companies/bulk", json={"companies": [{"company_id": "pg-ok"}, body]}
            )
            assert bulk.status_code == 422, bulk.text
            assert [e["field"] for e in bulk.json()["errors"]] == [f"companies[1].{field}"]
            stats = await relay.store.deliveries.stats()
            assert stats.queued == 0  # nothing stored, from either request

    run(main())


def test_control_characters_in_values_are_stored_and_delivered_faithfully(
    database_url: str, sim: SimulatorProcess
) -> None:
    value = "nul\u0000 tab\t bell\u0007 end"

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            r = await relay.post("/companies", json={"company_id": "c1", "metadata": {"v": value}})
            assert r.status_code == 202, r.text
            delivered = await relay.wait_for(r.json()["id"], "delivered")
            assert delivered["metadata"] == {"v": value}

    run(main())
    assert (sim.company("c1") or {}).get("v") == value


@pytest.mark.parametrize(
    "path",
    [
        "/deliveries/a%00b",
        "/deliveries/x.%C2%B2",  # '²' passes str.isdigit(), not int()
        "/deliveries/x.%D9%A3",  # Arabic-Indic three: int() takes it, a stored id never has it
        "/batches/a%00b",
    ],
)
def test_hostile_ids_in_paths_are_404(database_url: str, path: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            r = await relay.get(path, key=ADMIN_KEY)
            assert r.status_code == 404, r.text
            assert r.json()["error"] == "not_found"
            # The admin routes that write take the same ids.
            replay = await relay.post(
                path.replace("/batches/", "/deliveries/") + "/replay", key=ADMIN_KEY
            )
            assert replay.status_code == 404, replay.text

    run(main())


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("company_id=a%00b", "company_id"),
        ("cursor=9999999999999999999", "cursor"),  # past 64 bits: was an OverflowError
        ("cursor=%C2%B2", "cursor"),
    ],
)
def test_hostile_query_parameters_are_422(database_url: str, query: str, field: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            r = await relay.get(f"/deliveries?{query}", key=ADMIN_KEY)
            assert r.status_code == 422, r.text
            assert f"query.{field}" in [e["field"] for e in r.json()["errors"]]
            if field == "company_id":
                for method, path in (("POST", "/deliveries/replay"), ("DELETE", "/deliveries")):
                    extra = "&status=dead" if method == "DELETE" else ""
                    w = await relay.request(method, f"{path}?{query}{extra}", key=ADMIN_KEY)
                    assert w.status_code == 422, w.text

    run(main())
