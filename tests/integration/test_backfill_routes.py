"""The backfill routes in process: every answer they give, as documented; one per source;
hostile provider answers fail the backfill with a clear error, never a loop; no secret shown."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from app.main import create_app
from app.simulator.process import SimulatorProcess
from tests.inprocess import run
from tests.integration.test_backfill import finished, hubspot_company, hubspot_on, start
from tests.list_stubs import TOKEN, HubSpotStub
from tests.relay import ADMIN_KEY, INGEST_KEY
from tests.webhook_helpers import captured_logs

SPEC = create_app().openapi()


def check(method: str, template: str, status: int, body: Any) -> None:
    responses = SPEC["paths"][template][method]["responses"]
    assert str(status) in responses, f"{method} {template} answered undocumented {status}"
    schema = dict(responses[str(status)]["content"]["application/json"]["schema"])
    schema["components"] = SPEC["components"]
    jsonschema.Draft202012Validator(schema).validate(body)


def test_every_answer_of_the_routes_is_documented_and_one_runs_per_source(
    database_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(300)}
        stub.delay = 0.3

        async def main() -> None:
            async with hubspot_on(database_url, sim, stub) as relay:
                answers: list[tuple[str, str, Any]] = []

                async def call(method: str, path: str, template: str, **kw: Any) -> Any:
                    r = await relay.request(method.upper(), path, **kw)
                    check(method, template, r.status_code, r.json())
                    answers.append((method, template, r.status_code))
                    return r

                first = await call("post", "/backfills", "/backfills", key=ADMIN_KEY,
                                   json={"source": "hubspot"})  # fmt: skip
                assert first.status_code == 202
                again = await call("post", "/backfills", "/backfills", key=ADMIN_KEY,
                                   json={"source": "hubspot", "mode": "reconcile"})  # fmt: skip
                assert again.status_code == 409 and first.json()["id"] in again.json()["message"]
                stripe = await call("post", "/backfills", "/backfills", key=ADMIN_KEY,
                                    json={"source": "stripe"})  # fmt: skip
                assert stripe.status_code == 400 and "STRIPE_API_KEY" in stripe.json()["message"]
                for body in ({"source": "salesforce"}, {"source": "hubspot", "extra": 1}, {}):
                    bad = await call("post", "/backfills", "/backfills", key=ADMIN_KEY, json=body)
                    assert bad.status_code == 422
                assert (await call("post", "/backfills", "/backfills", key=INGEST_KEY,
                                   json={"source": "hubspot"})).status_code == 403  # fmt: skip
                assert (await call("get", "/backfills", "/backfills", key=None)).status_code == 401
                one = "/backfills/{backfill_id}"
                missing = await call("get", "/backfills/bf_nope", one, key=ADMIN_KEY)
                assert missing.status_code == 404
                got = await call("get", f"/backfills/{first.json()['id']}", one, key=ADMIN_KEY)
                assert got.json()["status"] == "running" and got.json()["owner"]
                listed = await call("get", "/backfills", "/backfills", key=ADMIN_KEY,
                                    params={"source": "hubspot", "limit": 1})  # fmt: skip
                assert listed.json()["next_cursor"] == first.json()["id"]
                bad_cursor = await call("get", "/backfills", "/backfills", key=ADMIN_KEY,
                                        params={"cursor": "x"})  # fmt: skip
                assert bad_cursor.status_code == 422
                stub.delay = 0
                assert (await finished(relay, first.json()["id"]))["status"] == "completed"

        run(main(), limit=90)


HOSTILE: dict[str, tuple[bytes, str]] = {
    "not json": (b"<html>502 Bad Gateway</html>", "something other than JSON"),
    "no results": (b'{"paging": {}}', "without a `results` list"),
    "no cursor": (b'{"results": [], "paging": {"next": {}}}', "paging.next.after"),
    "a cursor with NUL": (
        b'{"results": [], "paging": {"next": {"after": "a\\u0000b"}}}',
        "control characters",
    ),
    "too many records": (
        json.dumps({"results": [{"id": str(i), "properties": {}} for i in range(101)]}).encode(),
        "101 records for a page of 100",
    ),
    "a cursor that repeats": (
        b'{"results": [], "paging": {"next": {"after": "cur000100"}}}',
        "cursor it gave before",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_answer_fails_the_backfill_saying_why(
    case: str, sqlite_url: str, sim: SimulatorProcess
) -> None:
    body, reason = HOSTILE[case]
    with HubSpotStub() as stub:
        stub.companies = {str(1000 + i): hubspot_company(i) for i in range(300)}
        stub.hostile = {2: body} if case == "a cursor that repeats" else {1: body}

        async def main() -> dict[str, Any]:
            async with hubspot_on(sqlite_url, sim, stub) as relay:
                return await finished(relay, await start(relay, "hubspot"))

        result = run(main())
    assert result["status"] == "failed", result
    assert reason in result["last_error"], result
    assert len(stub.requests) < 10  # no loop


def test_unusable_records_are_skipped_and_counted_the_rest_stored(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    page = {
        "results": [
            {"id": "12\u00003", "properties": {"name": "NUL in its id"}},
            {"id": "not-digits", "properties": {}},
            {"id": 10**30, "properties": {"name": "an id past 64 bits"}},
            {"id": "77", "properties": {"name": "Fine", "numberofemployees": "1e999999"}},
        ]
    }
    with HubSpotStub() as stub:
        stub.companies = {"1": hubspot_company(1)}
        stub.hostile = {1: json.dumps(page).encode()}

        async def main() -> dict[str, Any]:
            async with hubspot_on(sqlite_url, sim, stub) as relay:
                return await finished(relay, await start(relay, "hubspot"))

        result = run(main())
    assert result["status"] == "completed", result
    assert result["skipped"] == 3 and result["errors"] == 3 and result["enqueued"] == 1
    assert "not a string of digits" in result["last_error"]


def test_a_refused_token_fails_the_backfill_and_no_secret_shows_anywhere(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    with HubSpotStub(token="the-right-token") as stub:
        stub.companies = {"1": hubspot_company(1)}

        async def main() -> tuple[dict[str, Any], str, list[str]]:
            async with hubspot_on(sqlite_url, sim, stub, stripe_api_key="sk_live_secret9") as relay:
                with captured_logs() as lines:
                    result = await finished(relay, await start(relay, "hubspot"))
                    listed = (await relay.get("/backfills", key=ADMIN_KEY)).text
                    metrics = (await relay.get("/metrics", key=None)).text
                return result, listed + metrics, lines

        result, shown, lines = run(main())
    assert result["status"] == "failed"
    assert "refused the credentials (401)" in result["last_error"]
    assert "HUBSPOT_ACCESS_TOKEN" in result["last_error"]
    everything = shown + "\n".join(lines) + json.dumps(SPEC) + repr(hubspot_settings())
    assert TOKEN not in everything and "sk_live_secret9" not in everything


def hubspot_settings() -> Any:
    from tests.inprocess import settings_for

    return settings_for("sqlite:///x.db", hubspot_access_token=TOKEN)
