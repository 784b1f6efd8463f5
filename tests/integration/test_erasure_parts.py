"""The parts of erasure that stand on their own: Userpilot's daily deletion run, the client's
`DELETE /v1/companies` against the simulator, and the erasure metrics."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY, generate_latest

from app.simulator.process import SimulatorProcess
from app.userpilot.client import UpstreamResult, UserpilotClient, next_deletion_run
from tests.inprocess import run
from tests.relay import UPSTREAM_KEY, metric_value


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# Userpilot's daily deletion run


@pytest.mark.parametrize(
    ("accepted", "run_at"),
    [
        ("2024-03-10 01:59:59.999", "2024-03-10 02:00:00"),
        ("2024-03-10 02:00:00", "2024-03-10 02:00:00"),  # exactly 02:00: that very run
        ("2024-03-10 02:00:00.001", "2024-03-11 02:00:00"),  # just after: tomorrow's
        ("2024-03-10 00:00:00", "2024-03-10 02:00:00"),
        ("2024-03-10 23:59:59", "2024-03-11 02:00:00"),
        ("2024-02-28 12:00:00", "2024-02-29 02:00:00"),  # a leap day
        ("2024-12-31 03:00:00", "2025-01-01 02:00:00"),  # across the year
    ],
)
def test_next_deletion_run_is_the_next_0200_utc_at_or_after_acceptance(
    accepted: str, run_at: str
) -> None:
    assert next_deletion_run(_unix(accepted)) == _unix(run_at)


# The client's DELETE /v1/companies, against the simulator


def _delete(sim: SimulatorProcess, ids: list[str], *, timeout: float = 5.0) -> UpstreamResult:
    async def call() -> UpstreamResult:
        client = UserpilotClient(base_url=sim.url, api_key=UPSTREAM_KEY, timeout=timeout)
        try:
            return await client.delete_companies(ids)
        finally:
            await client.aclose()

    return run(call())


def test_delete_companies_sends_the_ids_and_the_api_version(sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(0)
    before = time.time()
    result = _delete(sim, ["acme", "ünï/cödé", "acme"])
    assert (result.status, result.error) == (202, None)
    assert result.body == {"message": "2 companies scheduled for deletion"}
    (deletion,) = sim.deletions()
    assert deletion["request_id"] == result.request_id
    assert deletion["company_ids"] == ["acme", "ünï/cödé", "acme"]
    assert deletion["api_version"] == "2020-09-22"
    assert deletion["scheduled_for"] == next_deletion_run(deletion["accepted_at"])
    assert deletion["accepted_at"] >= before
    (request,) = sim.requests("/v1/companies")
    assert request["method"] == "DELETE"
    assert request["headers"]["authorization"] == f"Token {UPSTREAM_KEY}"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {"companies": ["acme", "ünï/cödé", "acme"]}


def test_delete_companies_then_the_run_removes_them(sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(0)
    assert _delete(sim, ["gone"]).ok
    assert sim.run_deletions() == []  # Userpilot never had it: nothing to remove, no error
    assert sim.deletions()[0]["executed_at"] is not None


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        ({"action": "retry_after", "retry_after": 3}, 429, 3.0),
        ({"action": "status", "status": 500}, 500, None),
        ({"action": "status", "status": 400}, 400, None),
        ({"action": "status", "status": 401}, 401, None),
        ({"action": "status", "status": 403}, 403, None),
    ],
)
def test_delete_companies_reports_a_refusal(
    sim: SimulatorProcess,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, object],
    status: int,
    retry_after: float | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.set_delete_pacing(0)
    sim.add_fault(**fault, path="/v1/companies", method="DELETE")
    result = _delete(sim, ["secret-company-id"])
    assert (result.status, result.retry_after, result.ok) == (status, retry_after, False)
    assert result.error
    assert result.request_id  # for the support ticket
    assert sim.deletions() == []
    assert "secret-company-id" not in caplog.text + str(result)


def test_delete_companies_without_an_answer_has_no_status(sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(0)
    sim.add_fault(action="drop", path="/v1/companies", method="DELETE")
    result = _delete(sim, ["acme"])
    assert result.status is None
    assert result.error == "connection error: RemoteProtocolError"


def test_delete_companies_times_out(sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(0)
    sim.add_fault(action="delay", delay=2, path="/v1/companies", method="DELETE")
    started = time.monotonic()
    result = _delete(sim, ["acme"], timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert result.status is None
    assert result.error is not None and result.error.startswith("timeout")


@pytest.mark.process
def test_delete_companies_over_the_pacing_is_throttled_with_retry_after(
    sim: SimulatorProcess,
) -> None:
    sim.set_delete_pacing(2)
    assert _delete(sim, ["a"]).ok
    throttled = _delete(sim, ["b"])
    assert throttled.status == 429
    assert throttled.retry_after is not None and 1 <= throttled.retry_after <= 2
    assert [d["company_ids"] for d in sim.deletions()] == [["a"]]


def test_the_client_counts_delete_calls_by_status_class(sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(0)
    name = "userpilot_relay_upstream_requests_total"
    before = metric_value(
        generate_latest(REGISTRY).decode(), name, endpoint="companies_delete", status_class="2xx"
    )
    assert _delete(sim, ["a"]).ok
    after = metric_value(
        generate_latest(REGISTRY).decode(), name, endpoint="companies_delete", status_class="2xx"
    )
    assert after == before + 1


# Metrics


@pytest.mark.parametrize(
    ("name", "kind", "labels"),
    [
        ("userpilot_relay_erasures", "counter", ("outcome",)),
        ("userpilot_relay_companies_erased", "counter", ()),
        ("userpilot_relay_suppressed_updates", "counter", ("source",)),
        ("userpilot_relay_erasure_requests", "counter", ("result",)),
        ("userpilot_relay_erasure_oldest_running_seconds", "gauge", ()),
    ],
)
def test_erasure_metrics_exist_with_their_labels(
    name: str, kind: str, labels: tuple[str, ...]
) -> None:
    (family,) = [m for m in REGISTRY.collect() if m.name == name]
    assert family.type == kind
    sample_labels = {tuple(sorted(sample.labels)) for sample in family.samples}
    assert sample_labels <= {tuple(sorted(labels))}


def test_erasure_metrics_show_every_label_value_from_the_start() -> None:
    exposition = generate_latest(REGISTRY).decode()
    for outcome in ("completed", "failed"):
        assert f'userpilot_relay_erasures_total{{outcome="{outcome}"}}' in exposition
    for result in ("accepted", "throttled", "error", "refused"):
        assert f'userpilot_relay_erasure_requests_total{{result="{result}"}}' in exposition
    for source in ("api", "bulk", "hubspot", "stripe", "backfill"):
        assert f'userpilot_relay_suppressed_updates_total{{source="{source}"}}' in exposition
    assert "userpilot_relay_companies_erased_total " in exposition
    assert "userpilot_relay_erasure_oldest_running_seconds " in exposition
