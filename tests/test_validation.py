"""Every validation rule of PRODUCT.md, over real HTTP: bad input gets a clear error naming the
field and stores nothing; good input reaches Userpilot unmangled (null kept)."""

from __future__ import annotations

from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests.relay import ADMIN_KEY, RelayProcess


def _stored(relay: RelayProcess) -> int:
    r = relay.request("GET", "/deliveries?limit=1000", key=ADMIN_KEY)
    assert r.status_code == 200
    return len(r.json()["items"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
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
    ],
)
def test_invalid_company_is_422_naming_the_field(
    relay: RelayProcess, body: dict[str, Any], field: str
) -> None:
    r = relay.request("POST", "/companies", json=body)
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["errors"]]
    assert field in fields
    assert _stored(relay) == 0


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "123456789012345678901234567890"]
)
def test_nan_and_infinities_are_rejected_with_the_key(relay: RelayProcess, literal: str) -> None:
    raw = f'{{"company_id": "a", "metadata": {{"ok": 1, "mrr": {literal}}}}}'
    r = relay.request(
        "POST", "/companies", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["metadata.mrr"]
    assert _stored(relay) == 0


def test_malformed_json_is_422(relay: RelayProcess) -> None:
    r = relay.request(
        "POST",
        "/companies",
        content=b'{"company_id": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_payload"


def test_non_json_content_type_is_415(relay: RelayProcess) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = relay.request("POST", "/companies", content=b'{"company_id":"a"}', headers=headers)
        assert r.status_code == 415, (content_type, r.text)
    assert _stored(relay) == 0


def test_body_over_the_limit_is_413(relay_factory: Any) -> None:
    relay = relay_factory(RELAY_MAX_BODY_BYTES="1024")
    big = {"company_id": "a", "metadata": {"notes": "x" * 2000}}
    r = relay.request("POST", "/companies", json=big)
    assert r.status_code == 413
    assert "1024" in r.json()["message"]

    # Chunked, with no Content-Length: refused while reading, not after.
    def chunks() -> Any:
        yield b'{"company_id": "a", "metadata": {"notes": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}}'

    r = relay.request(
        "POST", "/companies", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert _stored(relay) == 0


def test_valid_values_reach_userpilot_unmangled(relay: RelayProcess, sim: SimulatorProcess) -> None:
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
    r = relay.post_company("acme", metadata, headers={"Prefer": "wait=10"})
    assert r.status_code == 200, r.text
    (call,) = sim.requests(path="/v1/companies/identify")
    assert call["body"] == {"company_id": "acme", "metadata": metadata}


def test_metadata_may_be_omitted(relay: RelayProcess, sim: SimulatorProcess) -> None:
    r = relay.request(
        "POST", "/companies", json={"company_id": "bare"}, headers={"Prefer": "wait=10"}
    )
    assert r.status_code == 200, r.text
    assert sim.requests(path="/v1/companies/identify")[0]["body"] == {
        "company_id": "bare",
        "metadata": {},
    }


def test_bulk_is_all_or_nothing_and_names_indexes(relay: RelayProcess) -> None:
    companies: list[dict[str, Any]] = [
        {"company_id": f"c{i}", "metadata": {"n": i}} for i in range(50)
    ]
    companies[7]["metadata"]["bad"] = {"nested": True}
    companies[31] = {"company_id": "", "metadata": {}}
    companies[40]["typo"] = 1
    r = relay.request("POST", "/companies/bulk", json={"companies": companies})
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"companies[7].metadata.bad", "companies[31].company_id", "companies[40].typo"}
    assert _stored(relay) == 0


@pytest.mark.parametrize(
    "body", [{"companies": []}, {"companies": {}}, {}, {"companies": [], "x": 1}]
)
def test_bulk_shape_errors(relay: RelayProcess, body: dict[str, Any]) -> None:
    r = relay.request("POST", "/companies/bulk", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"]


def test_bulk_over_10000_items_is_422(relay: RelayProcess) -> None:
    body = {"companies": [{"company_id": f"c{i}"} for i in range(10_001)]}
    r = relay.request("POST", "/companies/bulk", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "companies"
    assert _stored(relay) == 0


def test_bulk_accepts_and_counts(relay: RelayProcess, sim: SimulatorProcess) -> None:
    body = {"companies": [{"company_id": f"b{i}", "metadata": {"n": i}} for i in range(25)]}
    r = relay.request("POST", "/companies/bulk", json=body)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["accepted"] == 25
    status = relay.request("GET", f"/batches/{batch['batch_id']}").json()
    assert status["total"] == 25
    assert sum(status["counts"].values()) == 25
    from tests.relay import wait_until

    wait_until(
        lambda: relay.request("GET", f"/batches/{batch['batch_id']}").json()["done"], timeout=20
    )
    final = relay.request("GET", f"/batches/{batch['batch_id']}").json()
    assert final["counts"]["delivered"] == 25
    assert sim.company("b24") == {"n": 24}


def test_unknown_ids_are_404(relay: RelayProcess) -> None:
    assert relay.request("GET", "/deliveries/nope").status_code == 404
    assert relay.request("GET", "/batches/nope").status_code == 404
    r = relay.request("POST", "/deliveries/nope/replay", key=ADMIN_KEY)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_every_bulk_item_is_readable_at_once(relay_factory: Any) -> None:
    relay = relay_factory(RELAY_RATE_LIMIT_PER_MINUTE="60")
    body = {"companies": [{"company_id": f"s{i}", "metadata": {"i": i}} for i in range(3000)]}
    batch = relay.request("POST", "/companies/bulk", json=body).json()["batch_id"]
    last = relay.request("GET", f"/deliveries/{batch}.2999")
    assert last.status_code == 200, last.text
    assert last.json()["status"] == "queued"
    assert last.json()["company_id"] == "s2999"
    assert relay.request("GET", f"/deliveries/{batch}.3000").status_code == 404
    counts = relay.request("GET", f"/batches/{batch}").json()["counts"]
    assert sum(counts.values()) == 3000
