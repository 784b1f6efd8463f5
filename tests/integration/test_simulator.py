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
USERS_BULK = "/v1/users/bulk_identify"
JOBS = "/v1/background_jobs"
DELETE = "/v1/companies"


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
        bulk_refresh_seconds=0.02,
        bulk_success_status=202,
        invalid_company_ids=[],
        delete_interval_seconds=0,
        delete_immediately=False,
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
    """The job once it has ended (`completed` or `failed`), or as it is after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_url(job_id)).json()
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.02)


def watch_job(client: httpx.Client, job_id: str, timeout: float = 5.0) -> list[str]:
    """The distinct statuses the job showed, polled until it ended."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(job_url(job_id)).json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("completed", "failed"):
            break
        time.sleep(0.01)
    return seen


def wait_until(condition: Any, timeout: float = 5.0) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


def companies_body(*ids: str) -> dict[str, Any]:
    return {"companies": [{"company_id": i, "metadata": {"n": n}} for n, i in enumerate(ids)]}


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
    sim.configure(bulk_phase_seconds=0.15, bulk_rows_per_minute=600, bulk_refresh_seconds=0.15)
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
    assert seen == ["queued", "validating", "processing", "pending_refresh", "completed"]
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


# Bulk: failures, the shared slot, listing, history, stats


def test_job_fault_fail_applies_after_rows_then_fails(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    assert sim.add_job_fault(action="fail", after_rows=2) == [
        {"action": "fail", "times": 1, "company_id": None, "after_rows": 2}
    ]
    job_id = client.post(BULK, json=companies_body("a", "b", "c", "d")).json()["job_id"]
    assert sim.job_faults() == []

    job = wait_for_job(client, job_id)
    assert (job["status"], job["completed_rows"], job["total_rows"]) == ("failed", 2, 4)
    assert job["end_time"] is not None
    assert sim.companies() == {"a": {"n": 0}, "b": {"n": 1}}
    stats = sim.stats()
    assert stats["jobs_failed"] == 1
    assert (stats["bulk_rows_received"], stats["bulk_rows_applied"]) == (4, 2)
    assert stats["faults_applied"] == 1
    # The slot is free again, and the fault was used up: the next job completes.
    again = client.post(BULK, json=companies_body("c", "d")).json()["job_id"]
    assert wait_for_job(client, again)["status"] == "completed"


def test_job_fault_stall_holds_the_slot_until_reset(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.add_job_fault(action="stall", after_rows=1, company_id="target")
    # A job without the company does not consume the fault.
    other = client.post(BULK, json=companies_body("x")).json()["job_id"]
    assert wait_for_job(client, other)["status"] == "completed"
    assert len(sim.job_faults()) == 1

    stalled = client.post(BULK, json=companies_body("a", "target", "c")).json()["job_id"]
    wait_until(lambda: client.get(job_url(stalled)).json()["completed_rows"] == 1)
    # Another environment's job runs start to end meanwhile; this one makes no progress.
    elsewhere = client.post(
        BULK, json=companies_body("e"), headers={"Authorization": f"Token {OTHER_KEY}"}
    ).json()["job_id"]
    other_headers = {"Authorization": f"Token {OTHER_KEY}"}
    wait_until(
        lambda: (
            client.get(job_url(elsewhere), headers=other_headers).json()["status"] == "completed"
        )
    )
    job = client.get(job_url(stalled)).json()
    assert (job["status"], job["completed_rows"], job["end_time"]) == ("processing", 1, None)
    assert sim.company("target") is None
    assert client.post(BULK, json=companies_body("z")).status_code == 409

    sim.reset()
    assert client.get(job_url(stalled)).status_code == 404
    assert client.post(BULK, json=companies_body("z")).status_code == 202


def test_job_faults_are_listed_consumed_in_order_and_cleared(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    faults = sim.add_job_faults(
        [{"action": "fail", "times": 2, "after_rows": 1}, {"action": "stall", "company_id": "q"}]
    )
    assert [(f["action"], f["times"]) for f in faults] == [("fail", 2), ("stall", 1)]
    first = client.post(BULK, json=companies_body("a", "b")).json()["job_id"]
    assert wait_for_job(client, first)["status"] == "failed"
    assert [(f["action"], f["times"]) for f in sim.job_faults()] == [("fail", 1), ("stall", 1)]

    sim.clear_job_faults()
    assert sim.job_faults() == []
    second = client.post(BULK, json=companies_body("a", "b")).json()["job_id"]
    assert wait_for_job(client, second)["status"] == "completed"

    sim.add_job_fault(action="fail")
    sim.reset()
    assert sim.job_faults() == []
    for bad in ({"action": "explode"}, {"action": "fail", "times": 0}, {"after_rows": -1}):
        response = httpx.post(sim.url + "/_sim/job_faults", json=bad)
        assert response.status_code == 400
        assert error_of(response)["error_code"] == "BAD_REQUEST"


def test_invalid_company_is_refused_in_real_time_and_fails_its_job(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    assert sim.configure(invalid_company_ids=["bad"])["invalid_company_ids"] == ["bad"]
    assert sim.config()["invalid_company_ids"] == ["bad"]

    refused = client.post(IDENTIFY, json={"company_id": "bad", "metadata": {"a": 1}})
    assert refused.status_code == 400
    assert refused.json() == {
        "errors": [
            {
                "error": "invalid_input",
                "error_code": "INVALID_COMPANY",
                "message": "company bad was refused",
                "details": {},
            }
        ]
    }
    assert client.post(IDENTIFY, json={"company_id": "good"}).status_code == 202

    sim.configure(bulk_phase_seconds=0.15)  # long enough for the poll to see each state
    accepted = client.post(BULK, json=companies_body("ok", "bad", "fine"))
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    assert watch_job(client, job_id) == ["queued", "validating", "failed"]
    job = client.get(job_url(job_id)).json()
    assert (job["completed_rows"], job["total_rows"]) == (0, 3)
    assert job["end_time"] is not None
    assert sim.companies() == {"good": {}}
    stats = sim.stats()
    assert (stats["jobs_failed"], stats["bulk_rows_applied"], stats["identify_accepted"]) == (
        1,
        0,
        1,
    )


def test_a_users_job_holds_the_environment_slot(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.configure(bulk_rows_per_minute=0)  # paused: the users job stays running
    users = {"users": [{"user_id": "u1", "metadata": {"role": "admin"}}, {"user_id": "u2"}]}
    response = client.post(USERS_BULK, json=users)
    assert response.status_code == 202
    job = response.json()
    assert job["job_id"].startswith("job:users:")
    assert (job["type"], job["status"], job["total_rows"]) == ("users_bulk_identify", "queued", 2)

    conflict = client.post(BULK, json=companies_body("acme"))
    assert conflict.status_code == 409
    assert error_of(conflict)["details"]["job_id"] == job["job_id"]
    ndjson = b'{"user_id": "u3"}\n'
    assert client.post(USERS_BULK, files={"file": ("u.ndjson", ndjson)}).status_code == 409

    sim.configure(bulk_rows_per_minute=1_000_000)
    done = wait_for_job(client, job["job_id"])
    assert (done["status"], done["completed_rows"]) == ("completed", 2)
    assert sim.companies() == {}
    companies_job = client.post(BULK, json=companies_body("acme"))
    assert companies_job.status_code == 202
    assert client.post(USERS_BULK, json=users).status_code == 409
    assert wait_for_job(client, companies_job.json()["job_id"])["status"] == "completed"

    stats = sim.stats()
    assert (stats["jobs_created"], stats["jobs_conflicted"], stats["max_running_jobs"]) == (2, 3, 1)
    assert (stats["bulk_rows_received"], stats["bulk_rows_applied"]) == (1, 1)
    bad = client.post(USERS_BULK, json={"users": [{"user_id": ""}]})
    assert (bad.status_code, error_of(bad)["details"]) == (400, {"field": "user_id", "index": 0})


def test_background_jobs_are_listed_newest_first_per_environment(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    first = client.post(BULK, json=companies_body("a")).json()["job_id"]
    wait_for_job(client, first)
    second = client.post(USERS_BULK, json={"users": [{"user_id": "u"}]}).json()["job_id"]
    wait_for_job(client, second)
    client.post(BULK, json=companies_body("b"), headers={"Authorization": f"Token {OTHER_KEY}"})

    sim.configure(rate_limit_per_minute=1)  # listing is not rate limited
    for _ in range(3):
        listed = client.get(JOBS)
        assert listed.status_code == 200
        jobs = listed.json()["jobs"]
        assert [j["job_id"] for j in jobs] == [second, first]
        assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert client.get(JOBS, headers={"Authorization": "Token nope"}).status_code == 401
    assert len(sim.jobs()) == 3


def test_bulk_success_status_is_configurable(client: httpx.Client, sim: SimulatorProcess) -> None:
    for status in (200, 201):
        sim.configure(bulk_success_status=status)
        response = client.post(BULK, json=companies_body(f"c{status}"))
        assert response.status_code == status
        job = response.json()
        assert job["status"] == "queued"
        assert wait_for_job(client, job["job_id"])["status"] == "completed"
    assert sim.config()["bulk_success_status"] == 201
    assert httpx.put(sim.url + "/_sim/config", json={"bulk_success_status": 204}).status_code == 400


def test_company_history_records_every_write_in_order(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    started = time.time()
    client.post(IDENTIFY, json={"company_id": "org/acme", "metadata": {"plan": "free"}})
    job_id = client.post(
        BULK,
        json={"companies": [{"company_id": "org/acme", "metadata": {"plan": "pro", "x": None}}]},
    ).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "completed"
    client.post(IDENTIFY, json={"company_id": "org/acme", "metadata": {"seats": 3}})

    history = sim.history("org/acme")
    assert history is not None
    assert [(w["via"], w["job_id"], w["metadata"]) for w in history] == [
        ("identify", None, {"plan": "free"}),
        ("bulk", job_id, {"plan": "pro", "x": None}),
        ("identify", None, {"seats": 3}),
    ]
    times = [w["at"] for w in history]
    assert started <= times[0] and times == sorted(times) and times[-1] <= time.time()
    # The plain company route still works for ids with a slash, and unknown ids are 404.
    assert sim.company("org/acme") == {"plan": "pro", "seats": 3}
    assert sim.history("missing") is None
    assert httpx.get(sim.url + "/_sim/companies/missing/history").status_code == 404


def test_company_history_keeps_the_last_50_writes(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    rows = [{"company_id": "busy", "metadata": {"n": n}} for n in range(60)]
    job_id = client.post(BULK, json={"companies": rows}).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "completed"
    history = sim.history("busy")
    assert history is not None
    assert [w["metadata"]["n"] for w in history] == list(range(10, 60))
    sim.reset()
    assert sim.history("busy") is None


def test_job_status_route_takes_the_percent_encoded_id(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    job_id = client.post(BULK, json=companies_body("a")).json()["job_id"]
    encoded = f"{JOBS}/{quote(job_id, safe='')}"
    assert "%3A" in encoded and ":" not in encoded
    response = client.get(encoded)
    assert (response.status_code, response.json()["job_id"]) == (200, job_id)
    assert client.get(f"{JOBS}/{job_id}").json()["job_id"] == job_id
    links = response.json()["links"]["self"]
    assert links == sim.url + encoded
    missing = client.get(f"{JOBS}/{quote('job:companies:' + str(uuid.uuid4()), safe='')}")
    assert missing.status_code == 404
    assert error_of(missing)["error_code"] == "NOT_FOUND"


def test_request_log_keeps_bulk_uploads_as_a_summary(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    ids = [f"c{i}" for i in range(10_000)]
    assert client.post(BULK, json=companies_body(*ids)).status_code == 202
    (logged,) = sim.requests()
    assert logged["body"] == {
        "format": "json",
        "rows": 10_000,
        "company_ids_sample": ["c0", "c1", "c2", "c3", "c4"],
    }
    assert (logged["path"], logged["status"]) == (BULK, 202)
    assert sim.stats()["bulk_calls"] == 1

    sim.reset()  # cancels the job, freeing the slot
    ndjson = b'{"user_id": "u1"}\n{"user_id": "u2"}\n\n{"user_id": "u3"}\n'
    assert client.post(USERS_BULK, files={"file": ("u.ndjson", ndjson)}).status_code == 202
    (logged,) = sim.requests()
    assert logged["body"] == {"format": "ndjson", "rows": 3, "user_ids_sample": ["u1", "u2", "u3"]}


def test_command_line_sets_the_bulk_options() -> None:
    args = [
        "--bulk-phase-seconds",
        "0.01",
        "--bulk-refresh-seconds",
        "0.3",
        "--bulk-success-status",
        "201",
        "--invalid-company-id",
        "bad",
        "--invalid-company-id",
        "worse",
    ]
    with SimulatorProcess(api_keys=["k"], extra_args=args) as process:
        config = process.config()
    assert config["bulk_phase_seconds"] == 0.01
    assert config["bulk_refresh_seconds"] == 0.3
    assert config["bulk_success_status"] == 201
    assert config["invalid_company_ids"] == ["bad", "worse"]


# Delete companies


def delete(client: httpx.Client, *ids: object, **headers: str) -> httpx.Response:
    body = json.dumps({"companies": list(ids)})
    return client.request("DELETE", DELETE, content=body, headers=headers)


def test_delete_schedules_companies_until_the_daily_run(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    for company_id in ("a", "b", "keep"):
        client.post(IDENTIFY, json={"company_id": company_id, "metadata": {"x": 1}})
    before = time.time()
    response = delete(client, "a", "b", "a", "never-seen")
    assert response.status_code == 202
    assert response.json() == {"message": "3 companies scheduled for deletion"}
    request_id = response.headers["x-request-id"]
    assert uuid.UUID(request_id)
    (deletion,) = sim.deletions()
    assert deletion["request_id"] == request_id
    assert deletion["company_ids"] == ["a", "b", "a", "never-seen"]
    assert deletion["api_version"] == "2020-09-22"
    assert before <= deletion["accepted_at"] <= time.time()
    scheduled = deletion["scheduled_for"]
    assert time.gmtime(scheduled)[3:6] == (2, 0, 0)
    assert deletion["accepted_at"] <= scheduled < deletion["accepted_at"] + 86_400
    assert (deletion["executed_at"], deletion["deleted"]) == (None, [])
    assert set(sim.companies()) == {"a", "b", "keep"}  # scheduled, not yet deleted

    assert sim.run_deletions() == ["a", "b"]
    assert set(sim.companies()) == {"keep"}
    (ran,) = sim.deletions()
    assert ran["executed_at"] >= ran["accepted_at"]
    assert ran["deleted"] == ["a", "b"]
    assert sim.run_deletions() == []  # nothing left to run
    stats = sim.stats()
    assert (stats["delete_calls"], stats["delete_accepted"], stats["companies_deleted"]) == (
        1,
        1,
        2,
    )


def test_identify_after_a_delete_re_creates_the_company(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.set_delete_pacing(0, immediately=True)
    client.post(IDENTIFY, json={"company_id": "acme", "metadata": {"plan": "pro", "seats": 3}})
    assert delete(client, "acme").status_code == 202
    assert sim.company("acme") is None
    assert sim.deletions()[0]["deleted"] == ["acme"]
    assert client.post(IDENTIFY, json={"company_id": "acme", "metadata": {"seats": 4}}).is_success
    assert sim.company("acme") == {"seats": 4}  # upsert: nothing of the old company is left
    history = sim.history("acme")
    assert history is not None
    assert [write["metadata"] for write in history] == [{"seats": 4}]


@pytest.mark.parametrize("authorization", [None, "Token wrong-key", f"Bearer {KEY}"])
def test_delete_without_a_valid_token_is_401(
    sim: SimulatorProcess, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request("DELETE", sim.url + DELETE, json={"companies": ["a"]}, headers=headers)
    assert response.status_code == 401
    assert uuid.UUID(response.headers["x-request-id"])
    assert sim.deletions() == []


@pytest.mark.parametrize(
    ("body", "index"),
    [
        (b"not json", None),
        (b'["a"]', None),
        (b"{}", None),
        (b'{"companies": "a"}', None),
        (b'{"companies": []}', None),
        (b'{"companies": ["a", ""]}', 1),
        (b'{"companies": ["a", 7]}', 1),
        (b'{"companies": [null]}', 0),
    ],
)
def test_delete_rejects_malformed_bodies_with_400(
    client: httpx.Client, sim: SimulatorProcess, body: bytes, index: int | None
) -> None:
    client.post(IDENTIFY, json={"company_id": "a"})
    sim.set_delete_pacing(0, immediately=True)
    response = client.request("DELETE", DELETE, content=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["error_code"] == "BAD_REQUEST"
    assert error["details"].get("index") == index
    assert uuid.UUID(response.headers["x-request-id"])
    assert sim.deletions() == []
    assert sim.company("a") == {}


def test_delete_accepts_a_request_without_api_version_and_records_it(
    sim: SimulatorProcess,
) -> None:
    response = httpx.request(
        "DELETE",
        sim.url + DELETE,
        json={"companies": ["a"]},
        headers={"Authorization": f"Token {KEY}"},
    )
    assert response.status_code == 202
    assert response.json() == {"message": "1 companies scheduled for deletion"}
    assert [d["api_version"] for d in sim.deletions()] == [None]


@pytest.mark.process
def test_delete_is_paced_per_key_apart_from_identify(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.set_delete_pacing(0.5)
    sim.configure(rate_limit_per_minute=1)
    assert client.post(IDENTIFY, json={"company_id": "a"}).status_code == 202
    assert client.post(IDENTIFY, json={"company_id": "b"}).status_code == 429
    first = delete(client, "a")
    assert first.status_code == 202  # identify's exhausted window does not count
    started = time.monotonic()
    throttled = delete(client, "b")
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "1"
    assert 0 < error_of(throttled)["details"]["retry_after_seconds"] <= 0.5
    assert uuid.UUID(throttled.headers["x-request-id"])
    other = httpx.request(
        "DELETE",
        sim.url + DELETE,
        json={"companies": ["c"]},
        headers={"Authorization": f"Token {OTHER_KEY}"},
    )
    assert other.status_code == 202  # per key
    accepted = wait_until(lambda: (r := delete(client, "b")).status_code == 202 and r)
    assert time.monotonic() - started >= 0.4
    assert accepted.status_code == 202
    assert [d["company_ids"] for d in sim.deletions()] == [["a"], ["c"], ["b"]]
    assert sim.stats()["delete_throttled"] >= 1


def test_delete_faults_match_by_method(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.add_faults(
        [
            {"action": "status", "status": 500, "path": DELETE, "method": "DELETE"},
            {"action": "retry_after", "retry_after": 7, "path": DELETE, "method": "DELETE"},
            {"action": "status", "status": 403, "path": DELETE, "method": "DELETE"},
        ]
    )
    assert client.post(IDENTIFY, json={"company_id": "a"}).status_code == 202  # not a DELETE
    assert delete(client, "a").status_code == 500
    throttled = delete(client, "a")
    assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "7")
    assert delete(client, "a").status_code == 403
    assert sim.deletions() == []
    assert delete(client, "a").status_code == 202
    assert len(sim.deletions()) == 1


def test_delete_lose_answer_fault_schedules_but_never_answers(
    client: httpx.Client, sim: SimulatorProcess
) -> None:
    sim.add_fault(action="lose_answer", path=DELETE, method="DELETE")
    with pytest.raises(httpx.TransportError):
        delete(client, "a")
    (deletion,) = sim.deletions()
    assert deletion["company_ids"] == ["a"]


def test_reset_forgets_deletions(client: httpx.Client, sim: SimulatorProcess) -> None:
    sim.set_delete_pacing(60)
    assert delete(client, "a").status_code == 202
    sim.reset()
    assert sim.deletions() == []
    assert delete(client, "a").status_code == 202  # the pacing window was forgotten too


def test_command_line_sets_the_delete_options() -> None:
    args = ["--delete-interval-seconds", "0.25", "--delete-immediately"]
    with SimulatorProcess(api_keys=["k"], extra_args=args) as process:
        config = process.config()
        assert (config["delete_interval_seconds"], config["delete_immediately"]) == (0.25, True)
    with SimulatorProcess(api_keys=["k"]) as process:
        config = process.config()
        assert (config["delete_interval_seconds"], config["delete_immediately"]) == (2.0, False)


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
