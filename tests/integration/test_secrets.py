"""Secrets never leave the relay: not in logs, responses, metrics, errors or the OpenAPI.

The first test reads everything a real process prints (uvicorn's lines too), on SQLite: the
store holds no secret. The access log is the app's own, checked in process."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.pg import SQLITE_ONLY
from tests.relay import ADMIN_KEY, INGEST_KEY, UPSTREAM_KEY, wait_until


@SQLITE_ONLY
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


def test_access_log_is_structured_and_can_be_switched_off(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def access_lines(**extra: Any) -> list[dict[str, Any]]:
        async def main() -> None:
            async with InProcessRelay(sqlite_url, **extra) as relay:
                r = await relay.post_company("acme", {"a": 1})
                assert r.status_code == 202
                # The transport returns once the app is done: its access line is written.

        capsys.readouterr()
        run(main())
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x]
        assert any(line["msg"] == "relay started" for line in lines)  # the log was captured
        return [line for line in lines if line["logger"] == "userpilot_relay.access"]

    (line,) = access_lines(relay_access_log=True)
    assert line["route"] == "/companies" and line["caller"] == "svc" and line["status"] == 202
    assert access_lines(relay_access_log=False) == []
