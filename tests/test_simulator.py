"""The Userpilot simulator, over real HTTP against its own subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from app.simulator.process import SimulatorProcess

KEY = "test-key"
OTHER_KEY = "other-key"
IDENTIFY = "/v1/companies/identify"
BULK = "/v1/companies/bulk_identify"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(api_keys=[KEY, OTHER_KEY]) as process:
        yield process


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorProcess) -> None:
    sim.reset()
    sim.configure(
        rate_limit_per_minute=600,
        success_status=202,
        latency=0,
        bulk_rows_per_minute=1_000_000,
        bulk_phase_seconds=0.02,
    )


@pytest.fixture
def client(sim: SimulatorProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {KEY}", "X-API-Version": "2020-09-22"}
    with httpx.Client(base_url=sim.url, headers=headers, timeout=5.0) as http:
        yield http


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The single error of Userpilot's `{"errors": [...]}` body, checking its shape."""
    errors = response.json()["errors"]
    assert len(errors) == 1
    assert set(errors[0]) == {"error", "error_code", "message", "details"}
    return dict(errors[0])


def job_url(job_id: str) -> str:
    return f"/v1/background_jobs/{quote(job_id, safe='')}"


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_url(job_id)).json()
        if job["status"] == "completed" or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.02)


# Identify: auth, validation, merge


@pytest.mark.parametrize("authorization", [None, "Token wrong-key", f"Bearer {KEY}", "Token"])
def test_identify_without_a_valid_token_is_401(
    sim: SimulatorProcess, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.post(sim.url + IDENTIFY, json={"company_id": "acme"}, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["error_code"] == "UNAUTHORIZED"
    assert uuid.UUID(response.headers["x-request-id"])
    assert sim.companies() == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"metadata": {}}', "company_id"),
        (b'{"company_id": ""}', "company_id"),
        (b'{"company_id": 42}', "company_id"),
        (b'{"company_id": "acme", "metadata": [1]}', "metadata"),
        (b'{"company_id": "acme", "metadata": {"plan": {"tier": 1}}}', "metadata.plan"),
        (b'{"company_id": "acme", "metadata": {"tags": ["a"]}}', "metadata.tags"),
        (b'{"company_id": "acme", "metadata": {"seats": NaN}}', None),
    ],
)
def test_identify_rejects_invalid_bodies_with_400(
    client: httpx.Client, sim: SimulatorProcess, body: bytes, field: str | None
) -> None:
    response = client.post(IDENTIFY, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["error_code"] == "BAD_REQUEST"
    assert error["message"]
    if field is not None:
        assert error["details"]["field"] == field
        assert field in error["message"]
    assert sim.companies() == {}


def test_identify_merges_metadata_and_null_removes(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    first = {"plan": "pro", "seats": 10, "active": True, "mrr": 99.5}
    assert client.post(IDENTIFY, json={"company_id": "acme", "metadata": first}).status_code == 202
    update = {"seats": 12, "plan": None, "renewal": "2026-01-01T00:00:00Z"}
    assert client.post(IDENTIFY, json={"company_id": "acme", "metadata": update}).status_code == 202
    assert client.post(IDENTIFY, json={"company_id": "other"}).status_code == 202

    assert sim.company("acme") == {
        "seats": 12,
        "active": True,
        "mrr": 99.5,
        "renewal": "2026-01-01T00:00:00Z",
    }
    assert sim.companies() == {"acme": sim.company("acme"), "other": {}}
    assert sim.company("missing") is None
    assert sim.stats()["identify_accepted"] == 3


def test_success_status_is_configurable(client: httpx.Client, sim: SimulatorProcess) -> None:
    accepted = client.post(IDENTIFY, json={"company_id": "acme"})
    assert (accepted.status_code, accepted.content) == (202, b"")

    sim.configure(success_status=200)
    ok = client.post(IDENTIFY, json={"company_id": "acme"})
    assert (ok.status_code, ok.json()) == (200, {})


def test_every_response_has_a_fresh_request_id(client: httpx.Client, sim: SimulatorProcess) -> None:
    responses = [
        client.post(IDENTIFY, json={"company_id": "acme"}),
        client.post(IDENTIFY, json={}),
        client.post(IDENTIFY, json={"company_id": "acme"}, headers={"Authorization": "Token x"}),
        client.get("/v1/nowhere"),
        client.get(job_url("job:companies:nope")),
        client.get("/_sim/stats"),
    ]
    assert [r.status_code for r in responses] == [202, 400, 401, 404, 404, 200]
    ids = [r.headers["x-request-id"] for r in responses]
    assert [str(uuid.UUID(i)) for i in ids] == ids and len(set(ids)) == len(ids)


def test_unknown_paths_are_404_json(client: httpx.Client) -> None:
    response = client.post("/v1/users/nothing", json={})
    assert response.status_code == 404
    assert error_of(response)["error_code"] == "NOT_FOUND"


def test_request_log_records_what_arrived(client: httpx.Client, sim: SimulatorProcess) -> None:
    client.post(IDENTIFY, json={"company_id": "acme", "metadata": {"plan": None}})
    client.post(IDENTIFY, content=b"garbage")
    client.get("/v1/nowhere")

    logged = sim.requests(path=IDENTIFY)
    assert [r["status"] for r in logged] == [202, 400]
    first = logged[0]
    assert first["method"] == "POST"
    assert first["company_id"] == "acme"
    assert first["body"] == {"company_id": "acme", "metadata": {"plan": None}}
    assert first["headers"]["authorization"] == f"Token {KEY}"
    assert first["headers"]["x-api-version"] == "2020-09-22"
    assert logged[1]["body"] is None
    assert first["time"] <= logged[1]["time"] <= time.time()
    assert [r["path"] for r in sim.requests()] == [IDENTIFY, IDENTIFY, "/v1/nowhere"]


# Rate limit


def test_rate_limit_is_per_key_over_a_sliding_minute(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.configure(rate_limit_per_minute=5)
    statuses = [client.post(IDENTIFY, json={"company_id": f"c{i}"}).status_code for i in range(5)]
    assert statuses == [202] * 5

    throttled = client.post(IDENTIFY, json={"company_id": "c5"})
    assert throttled.status_code == 429
    assert "retry-after" not in throttled.headers
    assert error_of(throttled)["error_code"] == "TOO_MANY_REQUESTS"
    bulk = client.post(BULK, json={"companies": [{"company_id": "c6"}]})
    assert bulk.status_code == 429

    other = client.post(
        IDENTIFY, json={"company_id": "c7"}, headers={"Authorization": f"Token {OTHER_KEY}"}
    )
    assert other.status_code == 202

    stats = sim.stats()
    assert stats["throttled"] == 2
    assert stats["identify_calls"] == 7
    assert stats["identify_accepted"] == 6
    assert stats["max_in_any_60s_window"] == 5
    assert stats["max_in_any_1s_window"] == 5
    assert "c5" not in sim.companies()


# Faults


def test_status_fault_matches_company_and_path(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=503, company_id="flaky")
    sim.add_fault(action="status", status=500, path=BULK, body={"oops": True})

    assert client.post(IDENTIFY, json={"company_id": "fine"}).status_code == 202
    failed = client.post(IDENTIFY, json={"company_id": "flaky"})
    assert failed.status_code == 503
    assert error_of(failed)["error_code"] == "SERVICE_UNAVAILABLE"
    assert uuid.UUID(failed.headers["x-request-id"])
    assert client.post(IDENTIFY, json={"company_id": "flaky"}).status_code == 202

    bulk = client.post(BULK, json={"companies": [{"company_id": "b"}]})
    assert (bulk.status_code, bulk.json()) == (500, {"oops": True})
    assert sim.faults() == []
    assert sim.company("flaky") == {}


def test_faults_are_consumed_in_order(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_faults(
        [
            {"action": "status", "status": 502, "times": 2},
            {"action": "retry_after", "retry_after": 1},
        ]
    )
    responses = [client.post(IDENTIFY, json={"company_id": "acme"}) for _ in range(4)]
    assert [r.status_code for r in responses] == [502, 502, 429, 202]
    assert responses[2].headers["retry-after"] == "1"
    assert "retry-after" not in responses[0].headers
    assert [r["status"] for r in sim.requests()] == [502, 502, 429, 202]


def test_clearing_faults(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_fault(action="status", status=500, times=3)
    sim.clear_faults()
    assert client.post(IDENTIFY, json={"company_id": "acme"}).status_code == 202


def test_delay_fault_then_handles_normally(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_fault(action="delay", delay=0.3)
    started = time.monotonic()
    response = client.post(IDENTIFY, json={"company_id": "slow", "metadata": {"a": 1}})
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 202
    assert sim.company("slow") == {"a": 1}


def test_drop_fault_closes_the_connection(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_fault(action="drop", company_id="gone")
    with pytest.raises(httpx.TransportError):
        client.post(IDENTIFY, json={"company_id": "gone"})

    assert client.post(IDENTIFY, json={"company_id": "gone"}).status_code == 202
    assert [r["status"] for r in sim.requests()] == [0, 202]
    assert sim.stats()["dropped"] == 1


def test_drop_fault_sends_no_bytes_at_all(sim: SimulatorProcess) -> None:
    sim.add_fault(action="drop")
    address = urlsplit(sim.url)
    assert address.hostname is not None and address.port is not None
    body = json.dumps({"company_id": "raw"}).encode()
    request = (
        f"POST {IDENTIFY} HTTP/1.1\r\nHost: sim\r\nAuthorization: Token {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(request)
        try:
            received = sock.recv(1024)
        except ConnectionResetError:
            received = b""
    assert received == b""


# Concurrency and stats


def test_stats_count_concurrency_per_company(sim: SimulatorProcess) -> None:
    sim.configure(latency=0.3)
    sim.add_fault(action="delay", delay=0.2, company_id="b")
    companies = ["a", "a", "a", "b"]

    def identify(company_id: str) -> int:
        with httpx.Client(base_url=sim.url, headers={"Authorization": f"Token {KEY}"}) as http:
            return http.post(IDENTIFY, json={"company_id": company_id}).status_code

    with ThreadPoolExecutor(max_workers=len(companies)) as pool:
        statuses = list(pool.map(identify, companies))
    assert statuses == [202] * 4

    stats = sim.stats()
    assert stats["identify_calls"] == 4
    assert stats["identify_accepted"] == 4
    assert stats["max_concurrent"] == 4
    assert stats["max_concurrent_per_company"] == 3
    assert stats["in_flight"] == 0


def test_reset_forgets_everything_but_config(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.configure(success_status=200)
    client.post(IDENTIFY, json={"company_id": "acme"})
    sim.add_fault(action="status")
    sim.reset()
    assert sim.companies() == {}
    assert sim.requests() == []
    assert sim.faults() == []
    assert sim.stats()["identify_calls"] == 0
    assert sim.config()["success_status"] == 200


def test_control_api_rejects_bad_input(sim: SimulatorProcess) -> None:
    bad_fault = httpx.post(sim.url + "/_sim/faults", json={"action": "explode"})
    assert bad_fault.status_code == 400
    assert error_of(bad_fault)["error_code"] == "BAD_REQUEST"
    bad_config = httpx.put(sim.url + "/_sim/config", json={"success_status": 201})
    assert bad_config.status_code == 400


# Bulk identify and background jobs


def test_bulk_job_runs_to_completion(client: httpx.Client, sim: SimulatorProcess) -> None:
    client.post(IDENTIFY, json={"company_id": "c1", "metadata": {"keep": 1, "drop": 2}})
    companies = [
        {"company_id": "c1", "metadata": {"plan": "pro", "drop": None}},
        {"company_id": "c2", "metadata": {"seats": 3}},
        {"company_id": "c3"},
    ]
    response = client.post(BULK, json={"companies": companies})
    assert response.status_code == 202
    job = response.json()
    assert job["job_id"].startswith("job:companies:")
    assert job["status"] == "queued"
    assert job["type"] == "companies_bulk_identify"
    assert (job["total_rows"], job["completed_rows"], job["end_time"]) == (3, 0, None)
    assert {"start_time", "file_size", "filename", "links"} <= set(job)

    done = wait_for_job(client, job["job_id"])
    assert done["status"] == "completed"
    assert done["completed_rows"] == 3
    assert done["end_time"] is not None
    assert isinstance(done["elapsed_time"], int)
    assert sim.companies() == {"c1": {"keep": 1, "plan": "pro"}, "c2": {"seats": 3}, "c3": {}}

    assert client.get(job_url("job:companies:unknown")).status_code == 404
    stranger = client.get(job_url(job["job_id"]), headers={"Authorization": f"Token {OTHER_KEY}"})
    assert stranger.status_code == 404
    unauthorized = client.get(job_url(job["job_id"]), headers={"Authorization": "Token nope"})
    assert unauthorized.status_code == 401


def test_bulk_job_passes_through_its_states(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.configure(bulk_phase_seconds=0.15, bulk_rows_per_minute=600)
    job_id = client.post(
        BULK, json={"companies": [{"company_id": f"c{i}"} for i in range(4)]}
    ).json()["job_id"]
    seen: list[str] = []
    progress: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        job = client.get(job_url(job_id)).json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        progress.append(job["completed_rows"])
        if job["status"] == "completed":
            break
        time.sleep(0.02)
    assert seen == ["queued", "validating", "processing", "completed"]
    assert progress == sorted(progress) and progress[-1] == 4
    assert any(0 < rows < 4 for rows in progress)


def test_bulk_accepts_ndjson_upload(client: httpx.Client, sim: SimulatorProcess) -> None:
    ndjson = b'{"company_id": "n1", "metadata": {"a": 1}}\n\n{"company_id": "n2"}\n'
    response = client.post(
        BULK, files={"file": ("companies.ndjson", ndjson, "application/x-ndjson")}
    )
    assert response.status_code == 202
    job = response.json()
    assert (job["total_rows"], job["filename"], job["file_size"]) == (
        2,
        "companies.ndjson",
        len(ndjson),
    )
    assert wait_for_job(client, job["job_id"])["status"] == "completed"
    assert sim.companies() == {"n1": {"a": 1}, "n2": {}}


def test_bulk_conflicts_while_a_job_runs(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.configure(bulk_rows_per_minute=0)  # paused: the job stays running
    body = {"companies": [{"company_id": "x"}]}
    first = client.post(BULK, json=body)
    assert first.status_code == 202

    conflict = client.post(BULK, json=body)
    assert conflict.status_code == 409
    assert error_of(conflict)["details"]["job_id"] == first.json()["job_id"]
    other_env = client.post(BULK, json=body, headers={"Authorization": f"Token {OTHER_KEY}"})
    assert other_env.status_code == 202

    sim.configure(bulk_rows_per_minute=1_000_000)
    assert wait_for_job(client, first.json()["job_id"])["status"] == "completed"
    assert client.post(BULK, json=body).status_code == 202


def test_bulk_over_10000_records_is_413(client: httpx.Client, sim: SimulatorProcess) -> None:
    companies = [{"company_id": f"c{i}"} for i in range(10_001)]
    response = client.post(BULK, json={"companies": companies})
    assert response.status_code == 413
    assert error_of(response)["error_code"] == "PAYLOAD_TOO_LARGE"
    assert sim.jobs() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"companies": "nope"}, "companies"),
        ({"companies": []}, "companies"),
        ({"companies": [{"company_id": "ok"}, {"company_id": ""}]}, "company_id"),
        ({"companies": [{"company_id": "ok", "metadata": {"x": [1]}}]}, "metadata.x"),
    ],
)
def test_bulk_validation_errors_are_400(
    client: httpx.Client, sim: SimulatorProcess, body: dict[str, Any], field: str
) -> None:
    response = client.post(BULK, json=body)
    assert response.status_code == 400
    assert error_of(response)["details"]["field"] == field
    assert sim.jobs() == []


def test_bulk_ndjson_with_a_bad_line_is_400(client: httpx.Client) -> None:
    response = client.post(BULK, files={"file": ("c.ndjson", b'{"company_id": "a"}\n{oops\n')})
    assert response.status_code == 400
    assert error_of(response)["details"] == {"line": 2}


# Process lifecycle


@pytest.mark.parametrize("http", ["auto", "h11"])
def test_own_process_drops_and_exits_cleanly_on_sigterm(http: str) -> None:
    args = ["--success-status", "200", "--http", http]
    process = SimulatorProcess(api_keys=["k"], extra_args=args)
    with httpx.Client(base_url=process.url, headers={"Authorization": "Token k"}) as http_client:
        assert http_client.post(IDENTIFY, json={"company_id": "a"}).status_code == 200
        process.add_fault(action="drop")
        with pytest.raises(httpx.TransportError):
            http_client.post(IDENTIFY, json={"company_id": "a"})
        assert http_client.post(IDENTIFY, json={"company_id": "a"}).status_code == 200
    assert process.close() == 0
    assert process.returncode == 0
