"""The property schema file (groundwork for issue 12): parsed once, refused in one line, and
applied to an update's metadata with lossless conversions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.domain.schema import PropertySchema, SchemaError, check, load_schema, parse_schema
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run, settings_for
from tests.webhook_helpers import EVENTS, hs_change, hubspot_relay, settled, v3_headers

SCHEMA = b"""{"properties": {"monthly_spend": {"type": "number"},
  "renewal_date": {"type": "date"}, "plan": {"type": "string"},
  "active": {"type": "boolean"},
  "billing_email": {"type": "string", "pii": "allowed"}},
  "unknown_properties": "allow"}"""


def test_a_schema_file_is_read_with_its_rules(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(SCHEMA)
    schema = load_schema(path)
    assert schema.properties["monthly_spend"].type == "number"
    assert schema.properties["billing_email"].pii_allowed
    assert not schema.properties["plan"].pii_allowed
    assert schema.unknown_properties == "allow"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"properties": [], "x": 1}', "unknown key 'x'"),
        (b'{"properties": []}', '"properties" must be an object'),
        (b'{"unknown_properties": "maybe"}', '"unknown_properties" must be'),
        (b'{"properties": {"a": {"type": "money"}}}', '"type" must be one of'),
        (b'{"properties": {"a": {"type": "date", "pii": "yes"}}}', '"pii" can only be'),
        (b'{"properties": {"a": "number"}}', "must be an object like"),
        (b'{"properties": {"a\\u0000b": {"type": "number"}}}', "control characters"),
        (b'{"properties": {"a": {"type": "number", "min": 1}}}', "unknown key 'min'"),
    ],
)
def test_a_malformed_schema_is_refused_in_one_line(raw: bytes, says: str) -> None:
    with pytest.raises(SchemaError) as refused:
        parse_schema(raw, where="schema.json")
    message = str(refused.value)
    assert says in message and message.startswith("schema.json")
    assert "\n" not in message and "\x00" not in message


def test_a_missing_file_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(tmp_path / "absent.json")


def test_declared_properties_are_converted_and_mismatches_named_without_the_value() -> None:
    schema = parse_schema(SCHEMA)
    checked = check(
        schema,
        {
            "monthly_spend": "1000",
            "renewal_date": "2026-12-01T10:00:00+02:00",
            "active": "true",
            "plan": "pro",
            "seats": 12,  # not declared: allowed as it is
            "gone": None,
        },
    )
    assert checked.problems == []
    assert checked.metadata == {
        "monthly_spend": 1000,
        "renewal_date": "2026-12-01T08:00:00Z",
        "active": True,
        "plan": "pro",
        "seats": 12,
        "gone": None,
    }
    bad = check(
        schema, {"monthly_spend": "a lot", "renewal_date": "next tuesday", "plan": 7, "x": 1}
    )
    assert [key for key, _ in bad.problems] == ["monthly_spend", "renewal_date", "plan"]
    assert all("a lot" not in why and "tuesday" not in why for _, why in bad.problems)
    assert bad.metadata == {"x": 1}


def test_unknown_properties_can_be_refused() -> None:
    schema = PropertySchema(properties={}, unknown_properties="reject")
    checked = check(schema, {"anything": 1, "removed": None})
    assert [key for key, _ in checked.problems] == ["anything", "removed"]
    assert checked.metadata == {}


# Over HTTP: the relay with a schema file, the simulator checking what Userpilot received. ------
def relay_with_schema(
    database_url: str, sim: SimulatorProcess, schema: bytes, tmp_path: Path
) -> InProcessRelay:
    path = tmp_path / "schema.json"
    path.write_bytes(schema)
    return InProcessRelay(
        database_url,
        endpoint=sim.url,
        relay_property_schema_file=str(path),
        relay_merge_window_seconds=0,
    )


def test_declared_types_are_what_userpilot_receives(
    database_url: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    async def main() -> httpx.Response:
        async with relay_with_schema(database_url, sim, SCHEMA, tmp_path) as relay:
            body = {
                "monthly_spend": "1000",
                "renewal_date": "2026-12-01T10:00:00+02:00",
                "active": "false",
                "seats": 3,
            }
            return await relay.post_company("typed", body, headers={"Prefer": "wait=10"})

    answer = run(main())
    assert answer.status_code == 200, answer.text
    assert sim.company("typed") == {
        "monthly_spend": 1000,
        "renewal_date": "2026-12-01T08:00:00Z",
        "active": False,
        "seats": 3,
    }


def test_a_value_that_does_not_fit_is_a_422_naming_it_and_nothing_is_stored(
    database_url: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, int]:
        async with relay_with_schema(database_url, sim, SCHEMA, tmp_path) as relay:
            single = await relay.post_company("bad", {"monthly_spend": "a lot", "plan": "pro"})
            items = [
                {"company_id": "ok", "metadata": {"plan": "pro"}},
                {"company_id": "bad", "metadata": {"renewal_date": "next tuesday"}},
            ]
            bulk = await relay.post("/companies/bulk", json={"companies": items})
            stats = await relay.store.deliveries.stats()
            return single, bulk, stats.queued

    single, bulk, queued = run(main())
    assert single.status_code == 422, single.text
    assert [e["field"] for e in single.json()["errors"]] == ["metadata.monthly_spend"]
    assert "expected a number" in single.json()["errors"][0]["message"]
    assert "a lot" not in single.text
    assert bulk.status_code == 422, bulk.text
    assert [e["field"] for e in bulk.json()["errors"]] == ["companies[1].metadata.renewal_date"]
    assert "tuesday" not in bulk.text
    assert queued == 0
    assert sim.company("bad") is None and sim.company("ok") is None


def test_a_malformed_schema_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(b'{"properties": {"a": {"type": "money"}}}')
    with pytest.raises(ValidationError) as refused:
        settings_for(f"sqlite:///{tmp_path / 'r.db'}", relay_property_schema_file=str(path))
    assert '"type" must be one of' in str(refused.value)


def test_a_webhook_value_that_does_not_fit_the_schema_is_dropped_and_counted(
    database_url: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    # The HubSpot mapping sends `name` as a string; a schema declaring it a number drops it
    # (a webhook is never refused for it), and the event's other properties still go out.
    path = tmp_path / "schema.json"
    path.write_bytes(b'{"properties": {"name": {"type": "number"}}}')
    now = int(time.time() * 1000)
    batch = [
        hs_change(601, "name", "Acme GmbH", at=now, event_id=1),
        hs_change(601, "numberofemployees", "42", at=now, event_id=2),
    ]
    body = json.dumps(batch).encode()

    async def main() -> tuple[httpx.Response, float]:
        async with hubspot_relay(
            database_url, sim.url, relay_property_schema_file=str(path)
        ) as relay:
            before = await relay.metric(EVENTS, source="hubspot", outcome="invalid_value")
            answer = await relay.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, "")
            )
            await settled(relay)
            after = await relay.metric(EVENTS, source="hubspot", outcome="invalid_value")
            return answer, after - before

    answer, invalid = run(main())
    assert answer.status_code == 200, answer.text
    assert invalid == 1
    assert sim.company("hs-601") == {"employees": 42}
