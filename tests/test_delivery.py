"""The dispatcher against a Userpilot simulator that fails like Userpilot does: headers, retries,
Retry-After, dead letters and replay, pacing, merging and order, idempotency, Prefer: wait."""

from __future__ import annotations

import itertools
import time
from typing import Any

from app import __version__
from app.simulator.process import SimulatorProcess
from tests.relay import ADMIN_KEY, UPSTREAM_KEY, RelayProcess, wait_until

IDENTIFY = "/v1/companies/identify"


def identify_calls(sim: SimulatorProcess) -> list[dict[str, Any]]:
    return sim.requests(path=IDENTIFY)


def test_headers_and_body_reach_userpilot(relay: RelayProcess, sim: SimulatorProcess) -> None:
    r = relay.post_company("acme", {"plan": "pro"}, headers={"Prefer": "wait=10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "delivered"
    assert body["last_upstream_status"] == 202
    assert body["last_request_id"]  # Userpilot's x-request-id, kept for support tickets
    (call,) = identify_calls(sim)
    headers = call["headers"]
    assert headers["authorization"] == f"Token {UPSTREAM_KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json, text/plain, */*"
    assert headers["x-api-version"] == "2020-09-22"
    assert headers["user-agent"] == f"userpilot-relay/{__version__}"
    assert call["method"] == "POST"
    assert call["body"] == {"company_id": "acme", "metadata": {"plan": "pro"}}


def test_endpoint_with_a_path_prefix(relay_factory: Any, sim: SimulatorProcess) -> None:
    # An enterprise endpoint is a full base URL; the relay appends /v1/... to it.
    relay = relay_factory(USERPILOT_ENDPOINT=sim.url + "/")
    r = relay.post_company("acme", {"a": 1}, headers={"Prefer": "wait=10"})
    assert r.status_code == 200


def test_prefer_wait_answers_202_when_still_pending(
    relay: RelayProcess, sim: SimulatorProcess
) -> None:
    sim.add_fault(action="status", status=503, times=100)
    started = time.monotonic()
    r = relay.post_company("slow", {"a": 1}, headers={"Prefer": "wait=1"})
    assert r.status_code == 202
    assert 0.9 <= time.monotonic() - started < 5
    assert r.json()["status"] == "queued"
    sim.clear_faults()
    relay.wait_for(r.json()["id"], "delivered")


def test_prefer_wait_answers_502_when_rejected(relay: RelayProcess, sim: SimulatorProcess) -> None:
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
    r = relay.post_company("bad", {"a": 1}, headers={"Prefer": "wait=10"})
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["status"] == "dead"
    assert body["last_upstream_status"] == 400
    assert "company_id is invalid" in body["last_error"]


def test_retries_through_5xx_and_dropped_connections(
    relay: RelayProcess, sim: SimulatorProcess
) -> None:
    sim.add_faults(
        [
            {"action": "status", "status": 500},
            {"action": "drop"},
            {"action": "status", "status": 503},
            {"action": "status", "status": 502},
        ]
    )
    r = relay.post_company("flaky", {"plan": "pro"})
    assert r.status_code == 202
    final = relay.wait_for(r.json()["id"], "delivered", timeout=30)
    assert final["attempts"] == 5
    assert sim.company("flaky") == {"plan": "pro"}
    assert [c["status"] for c in identify_calls(sim)] == [500, 0, 503, 502, 202]
    assert relay.metric("userpilot_relay_delivery_retries_total", reason="server_error") == 3
    assert relay.metric("userpilot_relay_delivery_retries_total", reason="connection_error") == 1


def test_timeouts_are_retried(relay_factory: Any, sim: SimulatorProcess) -> None:
    relay = relay_factory(RELAY_UPSTREAM_TIMEOUT_SECONDS="0.5")
    sim.add_fault(action="delay", delay=2)
    r = relay.post_company("sleepy", {"a": 1})
    relay.wait_for(r.json()["id"], "delivered", timeout=30)
    assert relay.metric("userpilot_relay_delivery_retries_total", reason="timeout") == 1


def test_retry_after_is_honoured_and_slows_everyone(
    relay: RelayProcess, sim: SimulatorProcess
) -> None:
    sim.add_fault(action="retry_after", retry_after=2)
    first = relay.post_company("one", {"a": 1}).json()["id"]
    wait_until(lambda: relay.metric("userpilot_relay_upstream_throttled_total") == 1)
    throttled_at = identify_calls(sim)[0]["time"]
    second = relay.post_company("two", {"b": 2}).json()["id"]
    relay.wait_for(first, "delivered", timeout=20)
    relay.wait_for(second, "delivered", timeout=20)
    later = identify_calls(sim)[1:]
    assert len(later) == 2
    # Neither the throttled company nor the other one was sent before Retry-After ran out.
    assert all(c["time"] - throttled_at >= 1.9 for c in later)
    assert relay.metric("userpilot_relay_upstream_throttled_total") == 1


def test_permanent_errors_dead_letter_at_once(relay: RelayProcess, sim: SimulatorProcess) -> None:
    for status in (400, 404, 413):
        sim.add_fault(action="status", status=status, company_id=f"c{status}")
        r = relay.post_company(f"c{status}", {"a": 1})
        dead = relay.wait_for(r.json()["id"], "dead")
        assert dead["attempts"] == 1
        assert dead["last_upstream_status"] == status
    assert relay.metric("userpilot_relay_deliveries_total", outcome="dead") == 3
    page = relay.request("GET", "/deliveries?status=dead", key=ADMIN_KEY).json()
    assert {d["company_id"] for d in page["items"]} == {"c400", "c404", "c413"}


def test_wrong_userpilot_key_is_loud(relay_factory: Any, sim: SimulatorProcess) -> None:
    relay = relay_factory(USERPILOT_API_KEY="wrong-key-123456")
    r = relay.post_company("acme", {"a": 1})
    dead = relay.wait_for(r.json()["id"], "dead")
    assert dead["last_upstream_status"] == 401
    assert relay.metric("userpilot_relay_upstream_auth_failures_total") == 1
    assert "Userpilot refused the API key" in relay.logs()
    assert "wrong-key-123456" not in relay.logs()


def test_dead_letter_replay(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400)
    r = relay.post_company("acme", {"plan": "pro"})
    dead_id = r.json()["id"]
    relay.wait_for(dead_id, "dead")
    assert relay.request("POST", f"/deliveries/{dead_id}/replay").status_code == 403
    replayed = relay.request("POST", f"/deliveries/{dead_id}/replay", key=ADMIN_KEY)
    assert replayed.status_code == 200
    assert replayed.json()["status"] == "queued"
    relay.wait_for(dead_id, "delivered")
    assert sim.company("acme") == {"plan": "pro"}
    again = relay.request("POST", f"/deliveries/{dead_id}/replay", key=ADMIN_KEY)
    assert again.status_code == 409


def test_replay_all_and_purge(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400, times=3)
    ids = [relay.post_company(f"c{i}", {"i": i}).json()["id"] for i in range(3)]
    for i in ids:
        relay.wait_for(i, "dead")
    r = relay.request("POST", "/deliveries/replay", key=ADMIN_KEY)
    assert r.json() == {"replayed": 3}
    for i in ids:
        relay.wait_for(i, "delivered")
    sim.add_fault(action="status", status=400)
    gone = relay.post_company("gone", {"x": 1}).json()["id"]
    relay.wait_for(gone, "dead")
    assert relay.request("DELETE", f"/deliveries/{ids[0]}", key=ADMIN_KEY).status_code == 409
    r = relay.request("DELETE", "/deliveries?status=dead", key=ADMIN_KEY)
    assert r.json() == {"purged": 1}
    assert relay.request("GET", f"/deliveries/{gone}").status_code == 404


def test_replay_never_overwrites_a_later_update(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400)
    old = relay.post_company("acme", {"plan": "free", "seats": 5}).json()["id"]
    relay.wait_for(old, "dead")
    new = relay.post_company("acme", {"plan": "enterprise"}).json()["id"]
    relay.wait_for(new, "delivered")
    relay.request("POST", f"/deliveries/{old}/replay", key=ADMIN_KEY)
    relay.wait_for(old, "delivered")
    # The replay brings back what nothing newer set (seats), never the stale plan.
    assert sim.company("acme") == {"plan": "enterprise", "seats": 5}
    assert identify_calls(sim)[-1]["body"]["metadata"] == {"seats": 5}


def test_merging_a_burst_costs_one_call(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="delay", delay=1.0)
    first = relay.post_company("acme", {"p0": 0}).json()["id"]
    wait_until(lambda: len(identify_calls(sim)) == 1)
    # While the first call is in flight, ten property changes arrive: one more call.
    ids = [relay.post_company("acme", {f"p{i}": i}).json()["id"] for i in range(1, 11)]
    for i in [first, *ids]:
        relay.wait_for(i, "delivered")
    calls = identify_calls(sim)
    assert len(calls) == 2
    assert calls[1]["body"]["metadata"] == {f"p{i}": i for i in range(1, 11)}
    assert relay.metric("userpilot_relay_updates_merged_total") == 9
    assert sim.stats()["max_concurrent_per_company"] == 1


def test_order_survives_a_failure(relay: RelayProcess, sim: SimulatorProcess) -> None:
    # The first call fails; a newer value arrives meanwhile; the retry must not resend the
    # old value after the new one, nor let it win.
    sim.add_fault(action="status", status=503, company_id="acme")
    a = relay.post_company("acme", {"plan": "free", "seats": 1, "note": "x"}).json()["id"]
    wait_until(lambda: len(identify_calls(sim)) == 1)
    b = relay.post_company("acme", {"plan": "pro", "note": None}).json()["id"]
    relay.wait_for(a, "delivered", timeout=20)
    relay.wait_for(b, "delivered", timeout=20)
    assert sim.company("acme") == {"plan": "pro", "seats": 1}
    last = identify_calls(sim)[-1]["body"]["metadata"]
    assert last == {"plan": "pro", "seats": 1, "note": None}


def test_pacing_never_exceeds_the_rate(relay_factory: Any, sim: SimulatorProcess) -> None:
    relay = relay_factory(RELAY_RATE_LIMIT_PER_MINUTE="300")  # one call every 0.2 s
    body = {"companies": [{"company_id": f"p{i}", "metadata": {"i": i}} for i in range(20)]}
    batch = relay.request("POST", "/companies/bulk", json=body).json()["batch_id"]
    wait_until(lambda: relay.request("GET", f"/batches/{batch}").json()["done"], timeout=30)
    times = [c["time"] for c in identify_calls(sim)]
    assert len(times) == 20
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Spread evenly: no two calls closer than the interval (minus scheduling jitter).
    assert min(gaps) >= 0.15, gaps
    assert sim.stats()["max_in_any_1s_window"] <= 6
    assert sim.stats()["throttled"] == 0


def test_a_healthy_userpilot_never_answers_429(relay: RelayProcess, sim: SimulatorProcess) -> None:
    # Userpilot's real limit (600/min) against the default pacing, with a 12 s burst of work.
    sim.configure(rate_limit_per_minute=600)
    body = {"companies": [{"company_id": f"h{i}", "metadata": {"i": i}} for i in range(120)]}
    batch = relay.request("POST", "/companies/bulk", json=body).json()["batch_id"]
    wait_until(lambda: relay.request("GET", f"/batches/{batch}").json()["done"], timeout=40)
    stats = sim.stats()
    assert stats["throttled"] == 0
    assert stats["max_in_any_1s_window"] <= 11


def test_idempotency_key(relay: RelayProcess, sim: SimulatorProcess) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = relay.post_company("acme", {"a": 1}, headers=headers)
    again = relay.post_company("acme", {"a": 1}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    conflict = relay.post_company("acme", {"a": 2}, headers=headers)
    assert conflict.status_code == 422
    assert conflict.json()["error"] == "idempotency_key_reused"
    relay.wait_for(first.json()["id"], "delivered")
    # Same key from another caller, or another key, is a new update.
    other = relay.post_company("acme", {"a": 1}, headers={"Idempotency-Key": "order-43"})
    assert other.json()["id"] != first.json()["id"]
    page = relay.request("GET", "/deliveries", key=ADMIN_KEY).json()["items"]
    assert len(page) == 2


def test_idempotency_key_on_bulk(relay: RelayProcess, sim: SimulatorProcess) -> None:
    body = {"companies": [{"company_id": "a"}, {"company_id": "b"}]}
    headers = {"Idempotency-Key": "import-7"}
    one = relay.request("POST", "/companies/bulk", json=body, headers=headers).json()
    two = relay.request("POST", "/companies/bulk", json=body, headers=headers).json()
    assert one == two
    # A batch becomes deliveries as the queue drains: once both are delivered, the listing
    # shows every delivery the two requests stored, and there must be exactly two.
    relay.wait_for(f"{one['batch_id']}.0", "delivered")
    relay.wait_for(f"{one['batch_id']}.1", "delivered")
    assert len(relay.request("GET", "/deliveries", key=ADMIN_KEY).json()["items"]) == 2


def test_delivery_listing_pages(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=400, times=5)
    ids = [relay.post_company(f"d{i}", {"i": i}).json()["id"] for i in range(5)]
    for i in ids:
        relay.wait_for(i, "dead")
    seen: list[str] = []
    cursor = None
    while True:
        query = "/deliveries?status=dead&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = relay.request("GET", query, key=ADMIN_KEY).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    bad = relay.request("GET", "/deliveries?status=lost", key=ADMIN_KEY)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.status"


def test_metrics_exposition(relay: RelayProcess, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=503, times=1000)
    relay.post_company("stuck", {"a": 1})
    wait_until(lambda: relay.metric("userpilot_relay_queue_depth", status="queued") == 1)
    wait_until(
        lambda: (
            relay.metric(
                "userpilot_relay_upstream_requests_total",
                endpoint="companies_identify",
                status_class="5xx",
            )
            >= 1
        )
    )
    assert relay.metric("userpilot_relay_queue_oldest_age_seconds") >= 0
    assert (
        relay.metric(
            "userpilot_relay_upstream_requests_total",
            endpoint="companies_identify",
            status_class="5xx",
        )
        >= 1
    )
    assert relay.metric("userpilot_relay_updates_accepted_total", source="api") == 1
    text = relay.request("GET", "/metrics").text
    names = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(
        n.startswith("userpilot_relay_") for n in names if not n.startswith(("python_", "process_"))
    )
    assert "company_id" not in text and "stuck" not in text


def test_readiness_does_not_depend_on_userpilot(relay_factory: Any) -> None:
    relay = relay_factory(USERPILOT_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
    assert relay.request("GET", "/readyz", key=None).status_code == 200
    assert relay.request("GET", "/healthz", key=None).json() == {"status": "ok"}
