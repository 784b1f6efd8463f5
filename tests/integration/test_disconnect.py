"""A client that hangs up before its body is whole: no 5xx, no traceback, one info line.

In process, the ASGI `receive` yields half the body and then `http.disconnect`, on every route
that reads a body, on both stores; and once over a real socket to a real relay process.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.types import Message

from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, WithState, run
from tests.relay import ADMIN_KEY, INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY, RelayProcess, wait_until
from tests.webhook_helpers import HS_SECRET, PUBLIC_URL, STRIPE_NEW, captured_logs

REQUESTS = "userpilot_relay_http_requests_total"
GONE = "client disconnected before its request body was whole"

COMPANY = orjson.dumps({"company_id": "gone-co", "metadata": {"plan": "pro", "seats": 12}})
BULK = orjson.dumps(
    {"companies": [{"company_id": f"gone-{i}", "metadata": {"n": i}} for i in range(50)]}
)
BACKFILL = orjson.dumps({"source": "hubspot", "mode": "full"})

# Every route that reads a body: (its path and route template, extra headers, key, body).
CASES = [
    pytest.param("/companies", {}, INGEST_KEY, COMPANY, id="companies-fast-lane"),
    pytest.param(
        "/companies", {"Idempotency-Key": "k1"}, INGEST_KEY, COMPANY, id="companies-route"
    ),
    pytest.param("/companies/bulk", {}, INGEST_KEY, BULK, id="bulk"),
    pytest.param("/webhooks/hubspot", {}, None, b'[{"eventId": 1, "objectId": 1}]', id="hubspot"),
    pytest.param("/webhooks/stripe", {}, None, b'{"id": "evt_1", "type": "x"}', id="stripe"),
    pytest.param("/backfills", {}, ADMIN_KEY, BACKFILL, id="backfills-admin"),
]


def statuses(route: str) -> dict[str, float]:
    """Requests counted for `route`, by status (all callers)."""
    counted: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == REQUESTS and sample.labels.get("route") == route:
                status = sample.labels["status"]
                counted[status] = counted.get(status, 0.0) + sample.value
    return counted


def change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def hang_up_mid_body(
    relay: InProcessRelay, path: str, headers: dict[str, str], key: str | None, body: bytes
) -> list[Message]:
    """Send the headers and half of `body` to the app, then `http.disconnect`; what it sent."""
    sent: list[Message] = []
    every = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        **{k.lower(): v for k, v in headers.items()},
    }
    if key is not None:
        every["authorization"] = f"Bearer {key}"
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in every.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("relay", 80),
    }
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body[: len(body) // 2], "more_body": True}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await WithState(relay.app, relay.state)(scope, receive, send)
    return sent


@pytest.mark.parametrize(("route", "headers", "key", "body"), CASES)
def test_a_client_hanging_up_mid_body_is_no_error(
    database_url: str,
    route: str,
    headers: dict[str, str],
    key: str | None,
    body: bytes,
) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url,
            hubspot_client_secret=HS_SECRET,
            relay_public_url=PUBLIC_URL,
            stripe_webhook_secret=STRIPE_NEW,
        ) as relay:
            before = statuses(route)
            with captured_logs() as lines:
                sent = await hang_up_mid_body(relay, route, headers, key, body)  # never raises
            assert sent[0]["type"] == "http.response.start"
            assert sent[0]["status"] == 499  # unheard; what the metrics count
            assert change(before, statuses(route)) == {"499": 1.0}
            logged = [json.loads(line) for line in lines]
            gone = [e for e in logged if e["msg"] == GONE]
            assert len(gone) == 1, logged
            assert gone[0]["level"] == "info" and gone[0]["route"] == route
            assert not [e for e in logged if "exc" in e or e["level"] == "error"], logged
            stats = await relay.store.deliveries.stats()
            assert stats.queued == 0  # nothing stored
            assert (await relay.get("/backfills", key=ADMIN_KEY)).json()["items"] == []

    run(main())


@pytest.fixture
def relay_process(simulator_process: SimulatorProcess, tmp_path: Path) -> Iterator[RelayProcess]:
    process = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": simulator_process.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        },
        tmp_path / "relay.log",
    )
    yield process
    process.stop()


@pytest.mark.process
def test_a_socket_closed_mid_body_counts_no_5xx_and_logs_one_line(
    relay_process: RelayProcess,
) -> None:
    relay = relay_process
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        head = (
            "POST /companies HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{relay.port}\r\n"
            f"Authorization: Bearer {INGEST_KEY}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(COMPANY)}\r\n\r\n"
        )
        sock.sendall(head.encode() + COMPANY[: len(COMPANY) // 2])
        time.sleep(0.2)  # the relay is reading the body when the client hangs up
    labels = {"route": "/companies", "method": "POST", "caller": "svc"}
    wait_until(lambda: relay.metric(REQUESTS, **labels, status="499") == 1, timeout=15)
    scrape_5xx = [
        line
        for line in relay.request("GET", "/metrics", key=None).text.splitlines()
        if line.startswith(REQUESTS) and 'status="5' in line
    ]
    assert scrape_5xx == []

    def logged() -> list[dict[str, Any]] | None:
        lines = [json.loads(x) for x in relay.logs().splitlines() if x.startswith("{")]
        return lines if any(e["msg"] == GONE for e in lines) else None

    lines = wait_until(logged, timeout=15)
    gone = [e for e in lines if e["msg"] == GONE]
    assert len(gone) == 1 and gone[0]["level"] == "info" and gone[0]["route"] == "/companies"
    assert "Traceback" not in relay.logs()
    assert not [e for e in lines if e["level"] == "error"], lines
    assert relay.request("GET", "/status", key=ADMIN_KEY).json()["queue"]["queued"] == 0
