"""The dispatcher against a Userpilot simulator that fails like Userpilot does: headers, retries,
Retry-After, dead letters and replay, pacing, merging and order, idempotency, Prefer: wait.

In process over the real app (`tests/inprocess.py`) and the bundled simulator (a process of its
own). What the store decides (attempts, dead letters, replay, merging, order, pacing slots,
idempotency, listing) runs on both stores; what the HTTP client or the routes decide (headers,
timeouts, Prefer: wait, metrics text, probes) runs on SQLite only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import orjson
import pytest

from app import __version__
from app.domain.models import NewUpdate
from app.domain.rules import REFUSED
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, eventually, run
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY

IDENTIFY = "/v1/companies/identify"
RETRIES = "userpilot_relay_delivery_retries_total"


def identify_calls(sim: SimulatorProcess) -> list[dict[str, Any]]:
    return sim.requests(path=IDENTIFY)


def relay_on(database_url: str, sim: SimulatorProcess, **extra: Any) -> InProcessRelay:
    return InProcessRelay(database_url, endpoint=sim.url, **extra)


def test_headers_and_body_reach_userpilot(sqlite_url: str, sim: SimulatorProcess) -> None:
    async def main() -> dict[str, Any]:
        async with relay_on(sqlite_url, sim) as relay:
            r = await relay.post_company("acme", {"plan": "pro"}, headers={"Prefer": "wait=10"})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

    body = run(main())
    assert body["status"] == "delivered"
    assert body["last_upstream_status"] == 202
    # Userpilot's x-request-id (the simulator's is a UUID), kept for support tickets.
    assert uuid.UUID(body["last_request_id"])
    (call,) = identify_calls(sim)
    headers = call["headers"]
    assert headers["authorization"] == f"Token {UPSTREAM_KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json, text/plain, */*"
    assert headers["x-api-version"] == "2020-09-22"
    assert headers["user-agent"] == f"userpilot-relay/{__version__}"
    assert call["method"] == "POST"
    assert call["body"] == {"company_id": "acme", "metadata": {"plan": "pro"}}


def test_endpoint_with_a_trailing_slash(sqlite_url: str, sim: SimulatorProcess) -> None:
    # An enterprise endpoint is a full base URL; the relay appends /v1/... to it.
    async def main() -> None:
        async with InProcessRelay(sqlite_url, endpoint=sim.url + "/") as relay:
            r = await relay.post_company("acme", {"a": 1}, headers={"Prefer": "wait=10"})
            assert r.status_code == 200, r.text

    run(main())
    assert [c["path"] for c in identify_calls(sim)] == [IDENTIFY]


def test_prefer_wait_answers_202_when_still_pending(sqlite_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=503, times=100)

    async def main() -> None:
        async with relay_on(sqlite_url, sim) as relay:
            started = time.monotonic()
            r = await relay.post_company("slow", {"a": 1}, headers={"Prefer": "wait=1"})
            assert r.status_code == 202
            assert 0.9 <= time.monotonic() - started < 5
            assert r.json()["status"] == "queued"
            sim.clear_faults()
            await relay.wait_for(r.json()["id"], "delivered")

    run(main())


def test_prefer_wait_answers_502_when_rejected(sqlite_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(
        action="status",
        status=400,
        body={
            "errors": [
                {
                    "error": "bad",
                    "error_code": "INVALID",
                    "message": "company_id is invalid",
                    "details": {},
                }
            ]
        },
    )

    async def main() -> None:
        async with relay_on(sqlite_url, sim) as relay:
            r = await relay.post_company("bad", {"a": 1}, headers={"Prefer": "wait=10"})
            assert r.status_code == 502, r.text
            body = r.json()
            assert body["status"] == "dead"
            assert body["last_upstream_status"] == 400
            assert "company_id is invalid" in body["last_error"]

    run(main())


def test_retries_through_5xx_and_dropped_connections(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.add_faults(
        [
            {"action": "status", "status": 500},
            {"action": "drop"},
            {"action": "status", "status": 503},
            {"action": "status", "status": 502},
        ]
    )

    async def main() -> None:
        async with relay_on(database_url, sim, relay_retry_base_seconds=0.05) as relay:
            server_errors = await relay.metric(RETRIES, reason="server_error")
            connection_errors = await relay.metric(RETRIES, reason="connection_error")
            r = await relay.post_company("flaky", {"plan": "pro"})
            assert r.status_code == 202
            final = await relay.wait_for(r.json()["id"], "delivered", within=30)
            assert final["attempts"] == 5
            assert await relay.metric(RETRIES, reason="server_error") - server_errors == 3
            assert await relay.metric(RETRIES, reason="connection_error") - connection_errors == 1

    run(main())
    assert sim.company("flaky") == {"plan": "pro"}
    assert [c["status"] for c in identify_calls(sim)] == [500, 0, 503, 502, 202]


def test_timeouts_are_retried(sqlite_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="delay", delay=2)

    async def main() -> None:
        async with relay_on(sqlite_url, sim, relay_upstream_timeout_seconds=0.5) as relay:
            timeouts = await relay.metric(RETRIES, reason="timeout")
            r = await relay.post_company("sleepy", {"a": 1})
            delivered = await relay.wait_for(r.json()["id"], "delivered", within=30)
            assert delivered["attempts"] == 2
            assert await relay.metric(RETRIES, reason="timeout") - timeouts == 1

    run(main())


@pytest.mark.process
def test_retry_after_is_honoured_and_slows_everyone(
    database_url: str, sim: SimulatorProcess
) -> None:
    sim.add_fault(action="retry_after", retry_after=2)
    throttled = "userpilot_relay_upstream_throttled_total"

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            before = await relay.metric(throttled)
            retried_before = await relay.metric(RETRIES, reason="throttled")
            first = (await relay.post_company("one", {"a": 1})).json()["id"]

            async def paused() -> bool:
                # Counted once the pause is stored (the throttle counter moves just before).
                return await relay.metric(RETRIES, reason="throttled") - retried_before == 1

            # At once: a send slot the feeder reserved before the pause is not used either.
            await eventually(paused)
            second = (await relay.post_company("two", {"b": 2})).json()["id"]
            await relay.wait_for(first, "delivered", within=20)
            await relay.wait_for(second, "delivered", within=20)
            assert await relay.metric(throttled) - before == 1  # once: nothing sent early

    run(main())
    throttled_call, *later = identify_calls(sim)
    assert throttled_call["status"] == 429
    assert len(later) == 2
    # Neither the throttled company nor the other one was sent before Retry-After ran out.
    assert all(c["time"] - throttled_call["time"] >= 1.9 for c in later)


def test_permanent_errors_dead_letter_at_once(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            dead_before = await relay.metric("userpilot_relay_deliveries_total", outcome="dead")
            for status in (400, 404, 413):
                sim.add_fault(action="status", status=status, company_id=f"c{status}")
                r = await relay.post_company(f"c{status}", {"a": 1})
                dead = await relay.wait_for(r.json()["id"], "dead")
                assert dead["attempts"] == 1
                assert dead["last_upstream_status"] == status
            dead_after = await relay.metric("userpilot_relay_deliveries_total", outcome="dead")
            assert dead_after - dead_before == 3
            page = (await relay.get("/deliveries?status=dead", key=ADMIN_KEY)).json()
            assert {d["company_id"] for d in page["items"]} == {"c400", "c404", "c413"}

    run(main())
    assert len(identify_calls(sim)) == 3  # one call each, never retried


def test_wrong_userpilot_key_is_loud(
    sqlite_url: str, sim: SimulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    auth_failures = "userpilot_relay_upstream_auth_failures_total"

    async def main() -> None:
        async with relay_on(sqlite_url, sim, userpilot_api_key="wrong-key-123456") as relay:
            before = await relay.metric(auth_failures)
            r = await relay.post_company("acme", {"a": 1})
            dead = await relay.wait_for(r.json()["id"], "dead")
            assert dead["last_upstream_status"] == 401
            assert await relay.metric(auth_failures) - before == 1

    run(main())
    logs = capsys.readouterr().out
    refused = [orjson.loads(line) for line in logs.splitlines() if "refused the API key" in line]
    assert refused and refused[0]["level"] == "error", logs
    assert "wrong-key-123456" not in logs


def test_dead_letter_replay(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400)

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            dead_id = (await relay.post_company("acme", {"plan": "pro"})).json()["id"]
            await relay.wait_for(dead_id, "dead")
            assert (await relay.post(f"/deliveries/{dead_id}/replay")).status_code == 403
            replayed = await relay.post(f"/deliveries/{dead_id}/replay", key=ADMIN_KEY)
            assert replayed.status_code == 200
            assert replayed.json()["status"] == "queued"
            await relay.wait_for(dead_id, "delivered")
            again = await relay.post(f"/deliveries/{dead_id}/replay", key=ADMIN_KEY)
            assert again.status_code == 409

    run(main())
    assert sim.company("acme") == {"plan": "pro"}


def test_replay_all_and_purge(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400, times=3)

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            ids = [(await relay.post_company(f"c{i}", {"i": i})).json()["id"] for i in range(3)]
            for i in ids:
                await relay.wait_for(i, "dead")
            r = await relay.post("/deliveries/replay", key=ADMIN_KEY)
            assert r.json() == {"replayed": 3}
            for i in ids:
                await relay.wait_for(i, "delivered")
            sim.add_fault(action="status", status=400)
            gone = (await relay.post_company("gone", {"x": 1})).json()["id"]
            await relay.wait_for(gone, "dead")
            assert (await relay.delete(f"/deliveries/{ids[0]}", key=ADMIN_KEY)).status_code == 409
            r = await relay.delete("/deliveries?status=dead", key=ADMIN_KEY)
            assert r.json() == {"purged": 1}
            assert (await relay.get(f"/deliveries/{gone}")).status_code == 404
            assert (await relay.get(f"/deliveries/{ids[0]}")).status_code == 200

    run(main())


def test_replay_never_overwrites_a_later_update(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400)

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            old = (await relay.post_company("acme", {"plan": "free", "seats": 5})).json()["id"]
            await relay.wait_for(old, "dead")
            new = (await relay.post_company("acme", {"plan": "enterprise"})).json()["id"]
            await relay.wait_for(new, "delivered")
            await relay.post(f"/deliveries/{old}/replay", key=ADMIN_KEY)
            await relay.wait_for(old, "delivered")

    run(main())
    # The replay brings back what nothing newer set (seats), never the stale plan.
    assert sim.company("acme") == {"plan": "enterprise", "seats": 5}
    assert identify_calls(sim)[-1]["body"]["metadata"] == {"seats": 5}


def test_merging_a_burst_costs_one_call(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="delay", delay=1.0)
    merged = "userpilot_relay_updates_merged_total"

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            before = await relay.metric(merged)
            first = (await relay.post_company("acme", {"p0": 0})).json()["id"]
            await eventually(lambda: len(identify_calls(sim)) == 1)
            # While the first call is in flight, ten property changes arrive: one more call.
            ids = [
                (await relay.post_company("acme", {f"p{i}": i})).json()["id"] for i in range(1, 11)
            ]
            for i in [first, *ids]:
                await relay.wait_for(i, "delivered")
            assert await relay.metric(merged) - before == 9

    run(main())
    calls = identify_calls(sim)
    assert len(calls) == 2
    assert calls[1]["body"]["metadata"] == {f"p{i}": i for i in range(1, 11)}
    assert sim.stats()["max_concurrent_per_company"] == 1


def test_order_survives_a_failure(database_url: str, sim: SimulatorProcess) -> None:
    # The first call fails; a newer value arrives meanwhile; the retry must not resend the
    # old value after the new one, nor let it win.
    sim.add_fault(action="status", status=503, company_id="acme")

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            a = (await relay.post_company("acme", {"plan": "free", "seats": 1, "note": "x"})).json()
            await eventually(lambda: len(identify_calls(sim)) == 1)
            b = (await relay.post_company("acme", {"plan": "pro", "note": None})).json()
            await relay.wait_for(a["id"], "delivered", within=20)
            await relay.wait_for(b["id"], "delivered", within=20)

    run(main())
    assert sim.company("acme") == {"plan": "pro", "seats": 1}
    last = identify_calls(sim)[-1]["body"]["metadata"]
    assert last == {"plan": "pro", "seats": 1, "note": None}


@pytest.mark.process
def test_pacing_never_exceeds_the_rate(database_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        # One call every 0.2 s.
        async with relay_on(database_url, sim, relay_rate_limit_per_minute=300) as relay:
            body = {"companies": [{"company_id": f"p{i}", "metadata": {"i": i}} for i in range(20)]}
            batch = (await relay.post("/companies/bulk", json=body)).json()["batch_id"]
            await relay.batch_done(batch)

    run(main())
    times = [c["time"] for c in identify_calls(sim)]
    assert len(times) == 20  # one call per company, none repeated
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Spread evenly: no two calls closer than the interval (minus scheduling jitter).
    assert min(gaps) >= 0.15, gaps
    assert sim.stats()["max_in_any_1s_window"] <= 6


@pytest.mark.process
def test_default_pacing_stays_under_userpilots_limit(
    sqlite_url: str, sim: SimulatorProcess
) -> None:
    # Userpilot's limit is 600 calls a minute; the default pacing spreads them at ten a second
    # (a burst of them at once would be throttled by a real Userpilot's shorter windows).
    async def main() -> None:
        async with relay_on(sqlite_url, sim) as relay:
            body = {"companies": [{"company_id": f"h{i}", "metadata": {"i": i}} for i in range(30)]}
            batch = (await relay.post("/companies/bulk", json=body)).json()["batch_id"]
            await relay.batch_done(batch)

    run(main())
    stats = sim.stats()
    assert stats["identify_calls"] == 30
    assert stats["max_in_any_1s_window"] <= 11, stats
    times = [c["time"] for c in identify_calls(sim)]
    assert times[-1] - times[0] >= 29 * 0.1 - 0.2  # spread, not sent in a burst


def test_idempotency_key(database_url: str, sim: SimulatorProcess) -> None:
    headers = {"Idempotency-Key": "order-42"}

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            first = await relay.post_company("acme", {"a": 1}, headers=headers)
            again = await relay.post_company("acme", {"a": 1}, headers=headers)
            assert first.status_code == again.status_code == 202
            assert first.json()["id"] == again.json()["id"]
            conflict = await relay.post_company("acme", {"a": 2}, headers=headers)
            assert conflict.status_code == 422
            assert conflict.json()["error"] == "idempotency_key_reused"
            await relay.wait_for(first.json()["id"], "delivered")
            # Another key is a new update.
            other = await relay.post_company(
                "acme", {"a": 1}, headers={"Idempotency-Key": "order-43"}
            )
            assert other.json()["id"] != first.json()["id"]
            page = (await relay.get("/deliveries", key=ADMIN_KEY)).json()["items"]
            assert len(page) == 2

    run(main())


def test_idempotency_key_on_bulk(database_url: str, sim: SimulatorProcess) -> None:
    body = {"companies": [{"company_id": "a"}, {"company_id": "b"}]}
    headers = {"Idempotency-Key": "import-7"}

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            one = (await relay.post("/companies/bulk", json=body, headers=headers)).json()
            two = (await relay.post("/companies/bulk", json=body, headers=headers)).json()
            assert one == two
            batch = one["batch_id"]
            # A batch is stored as one row and becomes deliveries only as the dispatcher
            # drains it: the listing shows an item once it is expanded, not at the ack. Once the
            # batch is done every item is a listed delivery: the two requests stored two.
            done = await relay.batch_done(batch)
            assert done["total"] == 2 and done["counts"]["delivered"] == 2, done
            listed = (await relay.get("/deliveries", key=ADMIN_KEY)).json()["items"]
            assert [d["id"] for d in listed] == [f"{batch}.0", f"{batch}.1"]

    run(main())


def test_delivery_listing_pages(database_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400, times=5)

    async def main() -> None:
        async with relay_on(database_url, sim) as relay:
            ids = [(await relay.post_company(f"d{i}", {"i": i})).json()["id"] for i in range(5)]
            for i in ids:
                await relay.wait_for(i, "dead")
            seen: list[str] = []
            cursor = None
            while True:
                query = "/deliveries?status=dead&limit=2" + (f"&cursor={cursor}" if cursor else "")
                page = (await relay.get(query, key=ADMIN_KEY)).json()
                assert len(page["items"]) <= 2
                seen += [d["id"] for d in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == ids
            bad = await relay.get("/deliveries?status=lost", key=ADMIN_KEY)
            assert bad.status_code == 422
            assert bad.json()["errors"][0]["field"] == "query.status"

    run(main())


def test_metrics_exposition(sqlite_url: str, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=503, times=1000)
    upstream_5xx = {"endpoint": "companies_identify", "status_class": "5xx"}
    accepted = "userpilot_relay_updates_accepted_total"

    async def main() -> str:
        async with relay_on(sqlite_url, sim) as relay:
            accepted_before = await relay.metric(accepted, source="api")
            failed_before = await relay.metric(
                "userpilot_relay_upstream_requests_total", **upstream_5xx
            )
            await relay.post_company("acme-zq7", {"a": 1})

            async def queued() -> bool:
                return await relay.metric("userpilot_relay_queue_depth", status="queued") == 1

            await eventually(queued)

            async def failed_calls() -> float:
                now = await relay.metric("userpilot_relay_upstream_requests_total", **upstream_5xx)
                return now - failed_before

            await eventually(failed_calls)

            async def waited() -> bool:
                return await relay.metric("userpilot_relay_queue_oldest_age_seconds") >= 0.3

            # The update has been waiting since it was stored, and the gauge says so.
            await eventually(waited)
            assert await relay.metric(accepted, source="api") - accepted_before == 1
            return (await relay.get("/metrics", key=None)).text

    text = run(main())
    names = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {"userpilot_relay_queue_depth", "userpilot_relay_deliveries_total"} <= names, names
    ours = {n for n in names if not n.startswith(("python_", "process_"))}
    assert all(n.startswith("userpilot_relay_") for n in ours), ours
    # No label names a company, and no company id is a label value (a route template such as
    # `/suppressions/{company_id}` names the parameter, not a company).
    assert "company_id=" not in text and "acme-zq7" not in text


def test_readiness_does_not_depend_on_userpilot(sqlite_url: str) -> None:
    async def main() -> None:
        # Nothing listens at the endpoint (a closed local port).
        async with InProcessRelay(sqlite_url, endpoint="http://127.0.0.1:9") as relay:
            assert (await relay.get("/readyz", key=None)).status_code == 200
            assert (await relay.get("/healthz", key=None)).json() == {"status": "ok"}

    run(main())


def test_a_waiting_caller_does_not_wait_out_the_merge_window(
    database_url: str, sim: SimulatorProcess
) -> None:
    # With a merge window longer than the wait, an update a caller waits for still goes at
    # once when nothing else of its company is in flight: 200, not 202 after the wait.
    async def main() -> Any:
        async with relay_on(database_url, sim, relay_merge_window_seconds=10) as relay:
            answer = await relay.post_company(
                "waited", {"plan": "pro"}, headers={"Prefer": "wait=3"}
            )
            unwaited = (await relay.post_company("unwaited", {"plan": "pro"})).json()["id"]
            later = await relay.get(f"/deliveries/{unwaited}", key=ADMIN_KEY)
            return answer, later.json()

    answer, later = run(main())
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "delivered"
    assert later["status"] == "queued"  # an update nobody waits for still waits its window


def test_ten_concurrent_waiting_changes_of_one_company_cost_at_most_two_calls(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> list[Any]:
        async with relay_on(database_url, sim) as relay:
            return list(
                await asyncio.gather(
                    *(
                        relay.post_company("burst", {f"p{i}": i}, headers={"Prefer": "wait=10"})
                        for i in range(10)
                    )
                )
            )

    answers = run(main())
    assert [a.status_code for a in answers] == [200] * 10
    assert 1 <= len(identify_calls(sim)) <= 2
    assert sim.company("burst") == {f"p{i}": i for i in range(10)}


# --- refused stored rows, fair scheduling, pruning (from the adversarial review) -----------------


OTHER_KEY = "other-ingest-key-55aa"


TWO_CALLERS = f"svc:ingest:{INGEST_KEY},other:ingest:{OTHER_KEY},ops:admin:{ADMIN_KEY}"


def test_a_stored_batch_row_the_store_cannot_hold_is_dead_lettered_and_the_queue_moves_on(
    database_url: str, sim: SimulatorProcess
) -> None:
    """Rows stored before the door refused them (an upgrade): they must not stall claiming."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            stored = await relay.store.deliveries.enqueue(
                [
                    NewUpdate(company_id="pg-ok", metadata={"a": 1}),
                    NewUpdate(company_id="pg-nul\u0000y", metadata={"a": 2}),
                    NewUpdate(company_id="pg-key", metadata={"bad\u0000key": 3}),
                ],
                source="bulk",
                caller="svc",
                batch=True,
            )
            batch = stored.batch_id
            await relay.wait_for(f"{batch}.0", "delivered")
            bad = await relay.wait_for(f"{batch}.1", "dead")
            assert bad["last_error"].startswith(REFUSED)
            assert "control characters" in bad["last_error"]
            refused_key = await relay.wait_for(f"{batch}.2", "dead")
            assert refused_key["last_error"].startswith(REFUSED)
            # Later work is still delivered.
            later = await relay.post("/companies", json={"company_id": "after", "metadata": {}})
            await relay.wait_for(later.json()["id"], "delivered")
            # A refused row stays dead: replaying it would send something else.
            replay = await relay.post(f"/deliveries/{batch}.1/replay", key=ADMIN_KEY)
            assert replay.status_code == 409, replay.text
            replayed = await relay.post("/deliveries/replay", key=ADMIN_KEY)
            assert replayed.json() == {"replayed": 0}

    run(main())
    assert set(sim.companies()) == {"pg-ok", "after"}


def test_a_single_update_never_waits_behind_another_callers_import(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url,
            endpoint=sim.url,
            relay_api_keys=TWO_CALLERS,
            relay_rate_limit_per_minute=600,
        ) as relay:
            bulk = {"companies": [{"company_id": f"imp-{i}"} for i in range(3000)]}
            assert (await relay.post("/companies/bulk", json=bulk)).status_code == 202
            await asyncio.sleep(0.5)  # the import is draining
            started = time.monotonic()
            r = await relay.post(
                "/companies",
                key=OTHER_KEY,
                json={"company_id": "urgent", "metadata": {"x": 1}},
                headers={"Prefer": "wait=10"},
            )
            assert r.status_code == 200, r.text
            waited = time.monotonic() - started
            assert r.json()["status"] == "delivered"
            assert waited < 5, waited

    run(main())
    calls = [r["body"]["company_id"] for r in sim.requests("/v1/companies/identify")]
    # At 10 calls a second the import takes five minutes; the single update went within the
    # next few slots, not after the thousands stored before it.
    assert "urgent" in calls
    assert calls.index("urgent") <= 12, calls.index("urgent")


def test_the_fair_lane_keeps_order_per_company(database_url: str, sim: SimulatorProcess) -> None:
    """A single update that jumps the queue carries the older batch value of its company with
    it (merged, newer wins): the older value never lands after the newer one."""

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            companies = [{"company_id": f"b{i}", "metadata": {"v": "old"}} for i in range(2500)]
            companies[2400] = {"company_id": "same", "metadata": {"v": "old", "kept": 1}}
            assert (
                await relay.post("/companies/bulk", json={"companies": companies})
            ).status_code == 202
            r = await relay.post(
                "/companies",
                json={"company_id": "same", "metadata": {"v": "new"}},
                headers={"Prefer": "wait=10"},
            )
            assert r.status_code == 200, r.text

    run(main())
    calls = [r["body"] for r in sim.requests("/v1/companies/identify")]
    same = [c["metadata"] for c in calls if c["company_id"] == "same"]
    assert same == [{"v": "new", "kept": 1}], same  # one call, merged in arrival order
    assert sim.company("same") == {"v": "new", "kept": 1}


def test_a_bad_stored_update_is_refused_alone_and_its_company_siblings_are_delivered(
    database_url: str, sim: SimulatorProcess
) -> None:
    """An update stored before the door refused it must not take its company's others down."""

    async def main() -> None:
        async with InProcessRelay(
            database_url, endpoint=sim.url, relay_merge_window_seconds=0.5
        ) as relay:
            bad = await relay.store.deliveries.enqueue(
                [NewUpdate(company_id="sib", metadata={"tab\tkey": 1})], source="api", caller="svc"
            )
            good = await relay.post(
                "/companies", json={"company_id": "sib", "metadata": {"plan": "pro"}}
            )
            await relay.wait_for(good.json()["id"], "delivered")
            dead = await relay.wait_for(str(bad.ids[0]), "dead")
            assert dead["last_error"].startswith(REFUSED)
            assert dead["metadata"] == {"tab\tkey": 1}  # kept as stored, for the operator

    run(main())
    assert sim.company("sib") == {"plan": "pro"}


def test_property_versions_are_pruned_but_kept_while_an_older_update_waits(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def versions(relay: InProcessRelay) -> set[tuple[str, str]]:
        store = relay.store
        claim_free = getattr(store.engine, "path", None)
        if claim_free is not None:  # SQLite
            import sqlite3

            with sqlite3.connect(claim_free) as conn:
                return {
                    (c, k) for c, k in conn.execute("SELECT company_id, key FROM property_versions")
                }
        import psycopg

        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT company_id, key FROM property_versions").fetchall()
            return {(str(c), str(k)) for c, k in rows}

    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            sim.add_fault(action="status", status=400, times=1)
            old = (
                await relay.post("/companies", json={"company_id": "kept", "metadata": {"p": 1}})
            ).json()["id"]
            await relay.wait_for(old, "dead")
            newer = (
                await relay.post("/companies", json={"company_id": "kept", "metadata": {"p": 2}})
            ).json()["id"]
            await relay.wait_for(newer, "delivered")
            done = (
                await relay.post("/companies", json={"company_id": "gone", "metadata": {"q": 1}})
            ).json()["id"]
            await relay.wait_for(done, "delivered")
            assert await versions(relay) == {("kept", "p"), ("gone", "q")}
            await relay.store.deliveries.prune(delivered_before=time.time() + 60)
            # "kept" still has a dead, older update: its version must stay so a replay of it
            # never overwrites p=2.
            assert await versions(relay) == {("kept", "p")}
            replay = await relay.post(f"/deliveries/{old}/replay", key=ADMIN_KEY)
            assert replay.status_code == 200
            await relay.wait_for(old, "delivered")

    run(main())
    assert sim.company("kept") == {"p": 2}
