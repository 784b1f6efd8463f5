"""Secrets never leave the relay: not in logs, responses, metrics, errors or the OpenAPI."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from app.simulator.process import SimulatorProcess
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY, wait_until


def test_no_secret_anywhere_the_relay_speaks(relay_factory: Any, sim: SimulatorProcess) -> None:
    relay = relay_factory(RELAY_LOG_LEVEL="DEBUG")
    secrets = [UPSTREAM_KEY, INGEST_KEY, ADMIN_KEY]
    seen: list[str] = []

    def record(r: Any) -> Any:
        seen.append(r.text)
        seen.append(str(dict(r.headers)))
        return r

    # Every path a secret could leak through: success, retries, rejections, auth failures,
    # validation errors that echo input, dead letters, 404s.
    sim.add_faults([{"action": "status", "status": 503}, {"action": "drop"}])
    ok = record(relay.post_company("acme", {"plan": "pro"}, headers={"Prefer": "wait=15"}))
    assert ok.status_code == 200
    sim.add_fault(action="status", status=400)
    record(relay.post_company("bad", {"a": 1}, headers={"Prefer": "wait=10"}))
    record(relay.request("POST", "/companies", key=f"{INGEST_KEY}x", json={"company_id": "a"}))
    record(relay.request("POST", "/companies", key=ADMIN_KEY, json={"company_id": "a"}))
    record(
        relay.request(
            "POST", "/companies", json={"company_id": "a", "metadata": {"k": {"nested": 1}}}
        )
    )
    record(relay.request("GET", "/deliveries?status=dead", key=ADMIN_KEY))
    record(relay.request("GET", "/deliveries/" + INGEST_KEY))
    record(relay.request("GET", "/metrics"))
    record(relay.request("GET", "/openapi.json"))
    wait_until(lambda: "Userpilot rejected the update" in relay.logs())
    relay.stop()
    everything = "\n".join(seen) + relay.logs()
    for secret in secrets:
        assert secret not in everything
        assert hashlib.sha256(secret.encode()).hexdigest() not in everything
    # Structured: every line the process printed is one JSON object.
    for line in relay.logs().splitlines():
        assert isinstance(json.loads(line), dict), line
    # The upstream key did reach Userpilot, where it belongs.
    assert sim.requests()[0]["headers"]["authorization"] == f"Token {UPSTREAM_KEY}"


def test_settings_repr_hides_secrets() -> None:
    from app.config import Settings

    settings = Settings(
        userpilot_api_key=UPSTREAM_KEY,  # type: ignore[arg-type]
        relay_api_keys=f"svc:ingest:{INGEST_KEY}",  # type: ignore[arg-type]
        stripe_webhook_secret="whsec_abcdef",  # type: ignore[arg-type]
    )
    text = repr(settings) + str(settings.model_dump())
    for secret in (UPSTREAM_KEY, INGEST_KEY, "whsec_abcdef"):
        assert secret not in text


def test_access_log_is_structured_and_can_be_switched_off(relay_factory: Any) -> None:
    on = relay_factory()
    on.post_company("acme", {"a": 1})
    wait_until(lambda: '"logger":"userpilot_relay.access"' in on.logs())
    line = next(json.loads(x) for x in on.logs().splitlines() if "userpilot_relay.access" in x)
    assert line["route"] == "/companies" and line["caller"] == "svc" and line["status"] == 202
    on.stop()
    off = relay_factory(RELAY_ACCESS_LOG="false")
    off.post_company("acme", {"a": 1})
    off.stop()
    assert "userpilot_relay.access" not in off.logs()
