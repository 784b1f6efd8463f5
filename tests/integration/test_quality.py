"""Data quality and privacy over HTTP (issue 12): the PII guard, the property catalogue and
type drift, on both stores, with the simulator checking what Userpilot received."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.simulator.process import SimulatorProcess
from tests.inprocess import ADMIN_KEY, InProcessRelay, run, settings_for
from tests.relay import RELAY_KEYS
from tests.webhook_helpers import (
    captured_logs,
    customer_event,
    hs_change,
    hubspot_relay,
    settled,
    stripe_headers,
    stripe_relay,
    v3_headers,
)

FINDINGS = "userpilot_relay_pii_findings_total"
CONFLICTS = "userpilot_relay_property_type_conflicts"
DRIFTS = "userpilot_relay_type_drift_rejections_total"
EVENTS = "userpilot_relay_webhook_events_total"

PERSONAL = [
    ("billing_contact", "jane.doe@example.com", "looks like an email address", "email"),
    ("hotline", "+49 30 1234 5678", "looks like a phone number", "phone"),
    ("last_login_ip", "203.0.113.7", "looks like an IP address", "ip_address"),
    ("card", "4111 1111 1111 1111", "looks like a payment card number", "card_number"),
]


def relay(database_url: str, sim: SimulatorProcess, **extra: Any) -> InProcessRelay:
    return InProcessRelay(database_url, endpoint=sim.url, relay_merge_window_seconds=0, **extra)


async def metric(relay: InProcessRelay, name: str, **labels: str) -> float:
    return await relay.metric(name, **labels)


def test_personal_data_is_refused_by_default_naming_the_field_never_the_value(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[list[httpx.Response], httpx.Response, int, float]:
        async with relay(database_url, sim) as r:
            before = await metric(r, FINDINGS, kind="email", action="rejected")
            singles = [
                await r.post_company(f"pii-{n}", {"plan": "pro", key: value})
                for n, (key, value, _, _) in enumerate(PERSONAL)
            ]
            items = [{"company_id": "fine", "metadata": {"plan": "pro", "seats": 3}}] + [
                {"company_id": f"bulk-{n}", "metadata": {key: value}}
                for n, (key, value, _, _) in enumerate(PERSONAL)
            ]
            bulk = await r.post("/companies/bulk", json={"companies": items})
            after = await metric(r, FINDINGS, kind="email", action="rejected")
            return singles, bulk, (await r.store.deliveries.stats()).queued, after - before

    singles, bulk, queued, counted = run(main())
    for answer, (key, value, says, _) in zip(singles, PERSONAL, strict=True):
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"] == [{"field": f"metadata.{key}", "message": says}]
        assert f"metadata.{key}: {says}" in answer.json()["message"]
        assert value not in answer.text
    assert bulk.status_code == 422, bulk.text
    assert [(e["field"], e["message"]) for e in bulk.json()["errors"]] == [
        (f"companies[{n + 1}].metadata.{key}", says) for n, (key, _, says, _) in enumerate(PERSONAL)
    ]
    assert all(value not in bulk.text for _, value, _, _ in PERSONAL)
    assert queued == 0 and counted == 2  # one single, one bulk item
    assert sim.company("fine") is None and sim.company("pii-0") is None


def test_strip_removes_personal_data_and_delivers_the_rest(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, dict[str, float]]:
        async with relay(database_url, sim, relay_pii_policy="strip") as r:
            labels = [(kind, "stripped") for *_, kind in PERSONAL]
            before = {k: await metric(r, FINDINGS, kind=k, action=a) for k, a in labels}
            metadata = {key: value for key, value, _, _ in PERSONAL}
            single = await r.post_company(
                "strip-1", {"plan": "pro", **metadata}, headers={"Prefer": "wait=10"}
            )
            bulk = await r.post(
                "/companies/bulk",
                json={
                    "companies": [{"company_id": "strip-2", "metadata": {"seats": 4, **metadata}}]
                },
            )
            await r.batch_done(bulk.json()["batch_id"])
            after = {k: await metric(r, FINDINGS, kind=k, action=a) for k, a in labels}
            return single, bulk, {k: after[k] - before[k] for k in after}

    single, bulk, counted = run(main())
    assert single.status_code == 200, single.text
    assert bulk.status_code == 202, bulk.text
    assert sim.company("strip-1") == {"plan": "pro"}
    assert sim.company("strip-2") == {"seats": 4}
    assert counted == {kind: 2 for *_, kind in PERSONAL}


def test_a_property_cleared_by_legal_passes(
    database_url: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps({"properties": {"billing_email": {"type": "string", "pii": "allowed"}}})
    )

    async def main() -> tuple[httpx.Response, httpx.Response, float]:
        async with relay(
            database_url,
            sim,
            relay_property_schema_file=str(schema),
            relay_pii_allowed_properties="owner_phone, owner_name",
        ) as r:
            before = await metric(r, FINDINGS, kind="email", action="allowed")
            ok = await r.post_company(
                "cleared",
                {"billing_email": "ap@acme.example", "owner_phone": "+1 415 555 2671"},
                headers={"Prefer": "wait=10"},
            )
            refused = await r.post_company("not-cleared", {"owner_email": "ceo@acme.example"})
            after = await metric(r, FINDINGS, kind="email", action="allowed")
            return ok, refused, after - before

    ok, refused, allowed = run(main())
    assert ok.status_code == 200, ok.text
    assert sim.company("cleared") == {
        "billing_email": "ap@acme.example",
        "owner_phone": "+1 415 555 2671",
    }
    assert (
        refused.status_code == 422
        and refused.json()["errors"][0]["field"] == "metadata.owner_email"
    )
    assert allowed == 1


def test_allow_lets_everything_through(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> httpx.Response:
        async with relay(database_url, sim, relay_pii_policy="allow") as r:
            return await r.post_company(
                "open", {"contact": "jane.doe@example.com"}, headers={"Prefer": "wait=10"}
            )

    assert run(main()).status_code == 200
    assert sim.company("open") == {"contact": "jane.doe@example.com"}


@pytest.mark.parametrize("policy", ["reject", "strip"])
def test_a_webhook_is_never_refused_for_personal_data_it_is_stripped(
    database_url: str, sim: SimulatorProcess, policy: str
) -> None:
    # HubSpot's `name` is mapped; an e-mail address in it is stripped, the event's other
    # properties still reach Userpilot, and HubSpot gets its 200.
    now = int(time.time() * 1000)
    batch = [
        hs_change(701, "name", "jane.doe@example.com", at=now, event_id=1),
        hs_change(701, "numberofemployees", "42", at=now, event_id=2),
    ]
    body = json.dumps(batch).encode()

    async def main() -> tuple[httpx.Response, float, list[str]]:
        async with hubspot_relay(database_url, sim.url, relay_pii_policy=policy) as r:
            before = await metric(r, FINDINGS, kind="email", action="stripped")
            with captured_logs() as lines:
                answer = await r.post(
                    "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, "")
                )
            await settled(r)
            after = await metric(r, FINDINGS, kind="email", action="stripped")
            return answer, after - before, lines

    answer, stripped, lines = run(main())
    assert answer.status_code == 200, answer.text
    assert stripped == 1
    assert sim.company("hs-701") == {"employees": 42}
    assert any("personal data were stripped" in line and '"name"' in line for line in lines)
    assert not any("jane.doe" in line for line in lines)


def test_the_catalogue_records_types_counts_and_sources_across_paths(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)
    body = json.dumps([hs_change(801, "numberofemployees", "42", at=now, event_id=9)]).encode()

    async def main() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        async with hubspot_relay(database_url, sim.url) as r:
            await r.post_company("cat-1", {"plan": "pro", "employees": 10, "renews": "2026-12-01"})
            await r.post_company("cat-2", {"plan": "team", "employees": None})
            items = [{"company_id": f"cat-b{i}", "metadata": {"employees": i}} for i in range(3)]
            await r.post("/companies/bulk", json={"companies": items})
            await r.post("/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, ""))
            denied = await r.get("/properties")  # an ingest key
            answer = await r.get("/properties", key=ADMIN_KEY)
            return denied, answer, answer.json()

    denied, answer, catalogue = run(main())
    assert denied.status_code == 403
    assert answer.status_code == 200, answer.text
    props = {p["name"]: p for p in catalogue["properties"]}
    assert catalogue["conflicts"] == 0
    employees = props["employees"]
    assert [(t["type"], t["count"]) for t in employees["types"]] == [("number", 5)]
    assert employees["sources"] == ["api", "bulk", "hubspot"]
    assert employees["count"] == 5 and not employees["conflict"]
    assert employees["first_seen"] <= employees["last_seen"]
    assert [(t["type"], t["count"], t["sources"]) for t in props["plan"]["types"]] == [
        ("string", 2, ["api"])
    ]
    assert props["renews"]["types"][0]["type"] == "date"  # a date-like string counts as a date


def test_the_catalogue_survives_a_restart(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> dict[str, Any]:
        async with relay(database_url, sim) as r:
            await r.post_company("kept", {"region": "emea"})
        async with relay(database_url, sim) as r:
            await r.post_company("kept-2", {"region": "apac"})
            body: dict[str, Any] = (await r.get("/properties", key=ADMIN_KEY)).json()
            return body

    props = {p["name"]: p for p in run(main())["properties"]}
    assert props["region"]["count"] == 2


def test_a_property_sent_with_two_types_is_a_conflict_warned_once_and_gauged(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[dict[str, Any], float, list[str], list[httpx.Response]]:
        async with relay(database_url, sim) as r:
            with captured_logs() as lines:
                answers = [
                    await r.post_company("drift-1", {"arr": 1000}),
                    await r.post_company("drift-2", {"arr": "1000"}),
                    await r.post_company("drift-3", {"arr": "1200"}),
                ]
                body = (
                    await r.get("/properties", key=ADMIN_KEY, params={"conflicts": "true"})
                ).json()
            gauge = await metric(r, CONFLICTS)
            return body, gauge, lines, answers

    body, gauge, lines, answers = run(main())
    assert [a.status_code for a in answers] == [202, 202, 202]  # warn: stored
    assert body["conflicts"] == 1 and [p["name"] for p in body["properties"]] == ["arr"]
    (arr,) = body["properties"]
    assert [(t["type"], t["count"]) for t in arr["types"]] == [("number", 1), ("string", 2)]
    assert arr["conflict"] is True
    assert gauge == 1
    warnings = [line for line in lines if "more than one type" in line]
    assert len(warnings) == 1 and '"arr"' in warnings[0]


def test_drift_reject_refuses_a_value_of_another_type_than_first_recorded(
    database_url: str, sim: SimulatorProcess, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"properties": {"mrr": {"type": "number"}}}))

    async def main() -> tuple[list[httpx.Response], float, int]:
        async with relay(
            database_url, sim, relay_type_drift="reject", relay_property_schema_file=str(schema)
        ) as r:
            before = await metric(r, DRIFTS)
            answers = [
                await r.post_company("t-1", {"seats": 5, "mrr": 10}),
                await r.post_company("t-2", {"seats": "five"}),
                await r.post_company("t-3", {"seats": None}),  # removing it is no type
                await r.post_company("t-4", {"seats": 6, "mrr": "20"}),  # declared: converted
            ]
            await r.get("/properties", key=ADMIN_KEY)
            after = await metric(r, DRIFTS)
            return answers, after - before, (await r.store.deliveries.stats()).queued

    answers, drifted, _ = run(main())
    assert [a.status_code for a in answers] == [202, 422, 202, 202]
    assert answers[1].json()["errors"] == [
        {"field": "metadata.seats", "message": "was first sent as a number, got a string"}
    ]
    assert "five" not in answers[1].text
    assert drifted == 1


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("relay_pii_policy", "maybe", "RELAY_PII_POLICY"),
        ("relay_type_drift", "sometimes", "RELAY_TYPE_DRIFT"),
        ("relay_pii_allowed_properties", "ok,bad\x00name", "control characters"),
    ],
)
def test_bad_quality_settings_refuse_to_start(
    tmp_path: Path, setting: str, value: str, says: str
) -> None:
    from app.config import ConfigError, load_settings

    with pytest.raises(ValidationError):
        settings_for(f"sqlite:///{tmp_path / 'r.db'}", **{setting: value})
    env = {
        "USERPILOT_API_KEY": "k",
        "RELAY_API_KEYS": "a:admin:secret-key-1",
        setting.upper(): value.replace("\x00", "\x01"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, given in env.items():
            patch.setenv(name, given)
        patch.chdir(tmp_path)
        with pytest.raises(ConfigError) as refused:
            load_settings()
    message = str(refused.value)
    assert setting.upper() in message and "\n" not in message
    assert says in message or says == setting.upper()


def test_a_float_card_number_and_an_over_long_property_name_are_refused(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        async with relay(database_url, sim) as r:
            card = await r.post_company("f-1", {"card": 4111111111111111.0})
            long = await r.post_company("f-2", {"x" * 256: "value"})
            bulk = await r.post(
                "/companies/bulk",
                json={"companies": [{"company_id": "f-3", "metadata": {"y" * 5000: 1}}]},
            )
            listed = await r.get("/properties", key=ADMIN_KEY)  # the catalogue is unharmed
            return card, long, bulk, listed

    card, long, bulk, listed = run(main())
    assert card.status_code == 422 and "payment card" in card.json()["errors"][0]["message"]
    assert long.status_code == 422 and "at most 255 characters" in long.text
    assert bulk.status_code == 422 and "at most 255 characters" in bulk.text
    assert listed.status_code == 200


def test_webhooks_are_never_refused_for_a_type_another_caller_recorded_first(
    database_url: str, sim: SimulatorProcess
) -> None:
    # An API caller sends `employees` as a string first; with RELAY_TYPE_DRIFT=reject the
    # API is held to that type, but HubSpot's mapping declares `employees` a number, and its
    # value still reaches Userpilot.
    now = int(time.time() * 1000)
    body = json.dumps([hs_change(901, "numberofemployees", "42", at=now, event_id=3)]).encode()

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with hubspot_relay(
            database_url, sim.url, relay_type_drift="reject", relay_merge_window_seconds=0
        ) as r:
            first = await r.post_company("poison", {"employees": "lots"})
            answer = await r.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, "")
            )
            await settled(r)
            return first, answer

    first, answer = run(main())
    assert first.status_code == 202 and answer.status_code == 200, answer.text
    assert sim.company("hs-901") == {"employees": 42}


def test_a_forgotten_property_starts_afresh(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> list[int]:
        async with relay(database_url, sim, relay_type_drift="reject") as r:
            statuses = [(await r.post_company("g-1", {"tier": 1})).status_code]
            statuses.append((await r.post_company("g-2", {"tier": "gold"})).status_code)
            path = "/properties/tier"
            statuses.append((await r.delete(path)).status_code)  # an ingest key
            statuses.append((await r.delete(path, key=ADMIN_KEY)).status_code)
            statuses.append((await r.delete(path, key=ADMIN_KEY)).status_code)
            statuses.append((await r.post_company("g-3", {"tier": "gold"})).status_code)
            statuses.append((await r.post_company("g-4", {"tier": 2})).status_code)
            names = [
                p["name"] for p in (await r.get("/properties", key=ADMIN_KEY)).json()["properties"]
            ]
            statuses.append(int("tier" in names))
            return statuses

    assert run(main()) == [202, 422, 403, 204, 404, 202, 422, 1]


def test_hostile_property_names_in_the_path_change_nothing(
    database_url: str, sim: SimulatorProcess
) -> None:
    # NUL, a control character, a lone surrogate (as UTF-8 of U+D800), an over-long name and
    # Unicode digits: each a clean 404 or 422 naming nothing, and the catalogue is unchanged.
    hostile = ["a%00b", "line%0Abreak", "%ED%A0%80", "x" * 300, "%D9%A3%D9%A4", "%FF"]

    async def main() -> tuple[list[int], list[str], list[str]]:
        async with relay(database_url, sim) as r:
            await r.post_company("h-1", {"tier": 1})
            before = (await r.get("/properties", key=ADMIN_KEY)).json()["properties"]
            statuses = [
                (await r.delete(f"/properties/{name}", key=ADMIN_KEY)).status_code
                for name in hostile
            ]
            bad_query = await r.get("/properties", key=ADMIN_KEY, params={"conflicts": "maybe"})
            statuses.append(bad_query.status_code)
            after = (await r.get("/properties", key=ADMIN_KEY)).json()["properties"]
            return statuses, [p["name"] for p in before], [p["name"] for p in after]

    statuses, before, after = run(main())
    assert all(status in (404, 422) for status in statuses), statuses
    assert statuses[-1] == 422
    assert before == after and "tier" in after


REFUSED_NAMES = "userpilot_relay_catalogue_names_refused_total"
BILLING_KEY = "billing-key-5c7e9a1f3d"


async def all_properties(r: InProcessRelay, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of GET /properties, following `next` until it is null."""
    pages: list[list[dict[str, Any]]] = []
    query = dict(params)
    while True:
        answer = await r.get("/properties", key=ADMIN_KEY, params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["properties"])
        if body["next"] is None:
            return pages
        assert body["next"] == body["properties"][-1]["name"]
        query["after"] = body["next"]


def test_one_caller_at_its_quota_leaves_room_for_another_and_is_still_delivered(
    database_url: str, sim: SimulatorProcess
) -> None:
    # `svc` sends 3,000 distinct names with RELAY_CATALOGUE_NAMES_PER_CALLER=2000: 2,000 are
    # catalogued, the rest counted; `billing` still adds its own; svc's updates still reach
    # Userpilot, names past its quota included.
    bulk = {
        "companies": [
            {"company_id": f"q-{c}", "metadata": {f"svc_{c:02d}_{i:03d}": i for i in range(100)}}
            for c in range(30)
        ]
    }

    async def main() -> tuple[list[list[dict[str, Any]]], float, httpx.Response, list[int]]:
        async with relay(
            database_url,
            sim,
            relay_catalogue_names_per_caller=2000,
            relay_api_keys=f"{RELAY_KEYS},billing:ingest:{BILLING_KEY}",
        ) as r:
            before = await metric(r, REFUSED_NAMES, caller="svc")
            statuses = [(await r.post("/companies/bulk", json=bulk)).status_code]
            own = {f"billing_{i}": i for i in range(5)}
            statuses.append((await r.post_company("bill-1", own, key=BILLING_KEY)).status_code)
            late = await r.post_company(
                "q-late", {"svc_late": "yes"}, headers={"Prefer": "wait=25"}
            )
            pages = await all_properties(r, limit=1000)
            return pages, await metric(r, REFUSED_NAMES, caller="svc") - before, late, statuses

    pages, refused, late, statuses = run(main(), limit=90)
    assert statuses == [202, 202]
    props = [p for page in pages for p in page]
    owners: dict[str, int] = {}
    for p in props:
        owners[p["added_by"]] = owners.get(p["added_by"], 0) + 1
    assert owners == {"svc": 2000, "billing": 5}
    assert [len(page) for page in pages] == [1000, 1000, 5]
    assert refused == 1001  # 1,000 names of the bulk request, and svc_late
    assert late.status_code == 200, late.text  # delivered all the same
    assert sim.company("q-late") == {"svc_late": "yes"}


def test_each_name_records_the_caller_that_added_it(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)
    body = json.dumps([hs_change(811, "numberofemployees", "42", at=now, event_id=11)]).encode()

    async def main() -> dict[str, Any]:
        async with hubspot_relay(
            database_url,
            sim.url,
            relay_api_keys=f"{RELAY_KEYS},billing:ingest:{BILLING_KEY}",
        ) as r:
            await r.post_company("who-1", {"plan": "pro"})
            await r.post("/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, ""))
            await r.post_company("who-2", {"employees": "many", "seats": 3}, key=BILLING_KEY)
            answer = await r.get("/properties", key=ADMIN_KEY)
            assert answer.status_code == 200, answer.text
            return {p["name"]: p for p in answer.json()["properties"]}

    props = run(main())
    assert props["plan"]["added_by"] == "svc"
    assert props["employees"]["added_by"] == "hubspot"  # a source counts as itself
    assert props["employees"]["conflict"]  # billing's string came later: hubspot keeps it
    assert props["seats"]["added_by"] == "billing"


def test_get_properties_pages_by_name_and_refuses_bad_paging(
    database_url: str, sim: SimulatorProcess
) -> None:
    names = [f"page_{i:02d}" for i in range(30)]

    async def main() -> tuple[list[list[str]], list[list[str]], dict[str, Any], list[Any]]:
        async with relay(database_url, sim) as r:
            await r.post_company("pg-1", {n: 1 for n in names})
            await r.post_company("pg-2", {n: "x" for n in names[:5]})  # 5 conflicts
            pages = [[p["name"] for p in page] for page in await all_properties(r, limit=7)]
            conflicts = await all_properties(r, limit=2, conflicts="true")
            whole = (await r.get("/properties", key=ADMIN_KEY)).json()  # default: 500
            bad = []
            for params in (
                {"limit": "0"},
                {"limit": "1001"},
                {"limit": "ten"},
                {"after": "a\x00b"},
                {"after": "x" * 300},
            ):
                answer = await r.get("/properties", key=ADMIN_KEY, params=params)
                bad.append((answer.status_code, answer.json()["errors"][0]["field"]))
            return pages, [[p["name"] for p in page] for page in conflicts], whole, bad

    pages, conflicts, whole, bad = run(main())
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [n for page in pages for n in page] == names  # every name once, in order
    assert [n for page in conflicts for n in page] == names[:5]
    assert len(whole["properties"]) == 30 and whole["next"] is None
    assert whole["conflicts"] == 5
    assert bad == [
        (422, "query.limit"),
        (422, "query.limit"),
        (422, "query.limit"),
        (422, "query.after"),
        (422, "query.after"),
    ]


# Issue 20: the PII guard on company ids and property names, and the length of a value ---------
TOO_LONG = "must be at most 65,535 characters"


@pytest.mark.parametrize("policy", ["reject", "strip"])
def test_a_company_id_that_is_personal_data_is_refused_naming_the_field(
    database_url: str, sim: SimulatorProcess, policy: str
) -> None:
    # It cannot be stripped: refused under `reject` and `strip` alike, never echoed.
    async def main() -> tuple[httpx.Response, httpx.Response, int, float]:
        async with relay(database_url, sim, relay_pii_policy=policy) as r:
            before = await metric(r, FINDINGS, kind="email", action="rejected")
            single = await r.post_company("jane.doe@example.com", {"plan": "pro"})
            items = [
                {"company_id": "fine", "metadata": {"plan": "pro"}},
                {"company_id": "+44 20 7946 0958", "metadata": {"plan": "pro"}},
            ]
            bulk = await r.post("/companies/bulk", json={"companies": items})
            after = await metric(r, FINDINGS, kind="email", action="rejected")
            return single, bulk, (await r.store.deliveries.stats()).queued, after - before

    single, bulk, queued, counted = run(main())
    assert single.status_code == 422, single.text
    assert single.json()["errors"] == [
        {"field": "company_id", "message": "looks like an email address"}
    ]
    assert "jane.doe" not in single.text
    assert bulk.status_code == 422, bulk.text
    assert bulk.json()["errors"] == [
        {"field": "companies[1].company_id", "message": "looks like a phone number"}
    ]
    assert "7946" not in bulk.text
    assert queued == 0 and counted == 1
    assert sim.company("fine") is None


def test_a_property_name_that_is_personal_data_is_refused_without_repeating_it(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, int]:
        async with relay(database_url, sim) as r:
            single = await r.post_company("acme", {"plan": "pro", "bob@example.com": "owner"})
            items = [
                {"company_id": "a", "metadata": {"plan": "pro"}},
                {"company_id": "b", "metadata": {"seats": 3, "+1 415 555 2671": True}},
            ]
            bulk = await r.post("/companies/bulk", json={"companies": items})
            return single, bulk, (await r.store.deliveries.stats()).queued

    single, bulk, queued = run(main())
    assert single.status_code == 422, single.text
    assert single.json()["errors"] == [
        {
            "field": "metadata",
            "message": "a property name looks like an email address (property #2)",
        }
    ]
    assert "bob@" not in single.text
    assert bulk.status_code == 422, bulk.text
    assert bulk.json()["errors"] == [
        {
            "field": "companies[1].metadata",
            "message": "a property name looks like a phone number (property #2)",
        }
    ]
    assert "415" not in bulk.text
    assert queued == 0


def test_strip_drops_a_property_whose_name_is_personal_data(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, float]:
        async with relay(database_url, sim, relay_pii_policy="strip") as r:
            before = await metric(r, FINDINGS, kind="email", action="stripped")
            single = await r.post_company(
                "named-1",
                {"plan": "pro", "bob@example.com": "owner"},
                headers={"Prefer": "wait=10"},
            )
            bulk = await r.post(
                "/companies/bulk",
                json={"companies": [{"company_id": "named-2", "metadata": {"jo@x.io": 1, "n": 2}}]},
            )
            await r.batch_done(bulk.json()["batch_id"])
            after = await metric(r, FINDINGS, kind="email", action="stripped")
            return single, bulk, after - before

    single, bulk, counted = run(main())
    assert single.status_code == 200, single.text
    assert bulk.status_code == 202, bulk.text
    assert sim.company("named-1") == {"plan": "pro"}
    assert sim.company("named-2") == {"n": 2}
    assert counted == 2


def test_ordinary_data_passes_the_default_guard(database_url: str, sim: SimulatorProcess) -> None:
    # Values that looked like personal data to the old guard reach Userpilot as sent.
    metadata = {
        "agent_version": "1.2.3.4",
        "db_host": "10.0.0.12",
        "gateway": "192.168.1.1",
        "repo": "git@github.com:acme/x.git",
        "interface_id": "00:1A:2B:FF:FE:3C:4D:5E",
        "model": "Ad::Feed",
        "account_ref": "4539578763621486",
        "order": "ORD-2026-000123",
    }

    async def main() -> httpx.Response:
        async with relay(database_url, sim) as r:
            return await r.post_company("ordinary", metadata, headers={"Prefer": "wait=10"})

    answer = run(main())
    assert answer.status_code == 200, answer.text
    assert sim.company("ordinary") == metadata


def test_a_value_longer_than_userpilot_keeps_is_refused_before_the_scan(
    database_url: str, sim: SimulatorProcess
) -> None:
    longest = ("4111 " * 13_108)[:65_535]  # the longest value, in the guard's costliest shape

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, int]:
        async with relay(database_url, sim) as r:
            # A megabyte of e-mail addresses: the answer says it is too long, not what the guard
            # would have found, because the length is checked at the door, before any scan.
            single = await r.post_company(
                "long", {"plan": "pro", "notes": "bob@example.com " * 62_000}
            )
            items = [
                {"company_id": "a", "metadata": {"plan": "pro"}},
                {"company_id": "b", "metadata": {"notes": "y" * 65_536}},
            ]
            bulk = await r.post("/companies/bulk", json={"companies": items})
            kept = await r.post_company("longest", {"notes": longest})
            await r.wait_for(kept.json()["id"], "delivered")
            return single, bulk, kept, len(sim.companies())

    single, bulk, kept, queued = run(main())
    assert single.status_code == 422, single.text
    assert single.json()["errors"] == [{"field": "metadata.notes", "message": TOO_LONG}]
    assert bulk.status_code == 422, bulk.text
    assert bulk.json()["errors"] == [{"field": "companies[1].metadata.notes", "message": TOO_LONG}]
    assert kept.status_code == 202, kept.text  # 65,535 characters: kept
    assert queued == 1  # only "longest" reached Userpilot: the refused ones stored nothing


def test_a_webhook_whose_company_id_is_personal_data_is_skipped_and_counted(
    database_url: str, sim: SimulatorProcess
) -> None:
    events = [
        customer_event("evt_pii", "cus_P", "ap@acme.example"),
        customer_event("evt_ok", "cus_O", "acme-ok"),
    ]

    async def main() -> tuple[list[httpx.Response], float, float, list[Any], list[str]]:
        async with stripe_relay(database_url, sim.url) as r:
            before = await metric(r, FINDINGS, kind="email", action="rejected")
            skipped = await metric(r, EVENTS, source="stripe", outcome="invalid_event")
            with captured_logs() as lines:
                answers = []
                for event in events:
                    body = json.dumps(event).encode()
                    answers.append(
                        await r.post(
                            "/webhooks/stripe", key=None, content=body, headers=stripe_headers(body)
                        )
                    )
            deliveries = await settled(r)
            counted = await metric(r, FINDINGS, kind="email", action="rejected") - before
            events_skipped = await metric(r, EVENTS, source="stripe", outcome="invalid_event")
            return answers, counted, events_skipped - skipped, deliveries, lines

    answers, counted, skipped, deliveries, lines = run(main())
    assert [a.status_code for a in answers] == [200, 200]
    assert counted == 1 and skipped == 1
    assert [d.company_id for d in deliveries] == ["acme-ok"]
    assert sim.company("acme-ok") is not None
    assert any("the company id looks like an email address" in line for line in lines)
    assert not any("ap@acme" in line for line in lines)


def test_a_webhook_value_longer_than_userpilot_keeps_is_dropped_and_counted(
    database_url: str, sim: SimulatorProcess
) -> None:
    now = int(time.time() * 1000)
    batch = [
        hs_change(711, "name", "x" * 70_000, at=now, event_id=1),
        hs_change(711, "numberofemployees", "42", at=now, event_id=2),
    ]
    body = json.dumps(batch).encode()

    async def main() -> tuple[httpx.Response, float]:
        async with hubspot_relay(database_url, sim.url) as r:
            before = await metric(r, "userpilot_relay_values_too_long_total", source="hubspot")
            answer = await r.post(
                "/webhooks/hubspot", key=None, content=body, headers=v3_headers(body, "")
            )
            await settled(r)
            after = await metric(r, "userpilot_relay_values_too_long_total", source="hubspot")
            return answer, after - before

    answer, counted = run(main())
    assert answer.status_code == 200, answer.text
    assert counted == 1
    assert sim.company("hs-711") == {"employees": 42}
