"""Relay keys and roles, over real HTTP; and the relay refusing to run open."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.relay import ADMIN_KEY, INGEST_KEY, ROOT, UPSTREAM_KEY, RelayProcess

BODY = {"company_id": "acme", "metadata": {"plan": "pro"}}


def test_missing_key_is_401_with_challenge(relay: RelayProcess) -> None:
    r = relay.request("POST", "/companies", key=None, json=BODY)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "header", ["Bearer not-a-key", "Basic c3ZjOmluZ2VzdA==", "Bearer", f"Token {INGEST_KEY}"]
)
def test_unknown_or_malformed_key_is_401(relay: RelayProcess, header: str) -> None:
    r = relay.request("POST", "/companies", key=None, json=BODY, headers={"Authorization": header})
    assert r.status_code == 401
    assert "www-authenticate" in r.headers


def test_roles(relay: RelayProcess) -> None:
    assert relay.request("POST", "/companies", key=ADMIN_KEY, json=BODY).status_code == 403
    assert relay.request("GET", "/deliveries?status=dead", key=INGEST_KEY).status_code == 403
    assert relay.request("POST", "/deliveries/replay", key=INGEST_KEY).status_code == 403
    created = relay.request("POST", "/companies", key=INGEST_KEY, json=BODY)
    assert created.status_code == 202
    delivery = created.json()["id"]
    for key in (INGEST_KEY, ADMIN_KEY):
        assert relay.request("GET", f"/deliveries/{delivery}", key=key).status_code == 200
    assert relay.request("GET", "/deliveries?status=dead", key=ADMIN_KEY).status_code == 200


def test_hashed_keys_and_caller_name_in_metrics(relay_factory: object) -> None:
    digest = hashlib.sha256(b"hashed-caller-key").hexdigest()
    relay = relay_factory(RELAY_API_KEYS=f"billing:ingest:sha256:{digest}")  # type: ignore[operator]
    r = relay.request("POST", "/companies", key="hashed-caller-key", json=BODY)
    assert r.status_code == 202
    assert relay.request("POST", "/companies", key=digest, json=BODY).status_code == 401
    assert (
        relay.metric(
            "userpilot_relay_http_requests_total",
            route="/companies",
            method="POST",
            caller="billing",
            status="202",
        )
        == 1
    )


def _start_without(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("USERPILOT_", "RELAY_"))}
    full |= {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "PYTHONPATH": str(ROOT)}
    full |= env
    return subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_to_start_without_userpilot_key(tmp_path: Path) -> None:
    done = _start_without(tmp_path, RELAY_API_KEYS=f"svc:ingest:{INGEST_KEY}")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "USERPILOT_API_KEY is not set" in out
    assert "Traceback" not in out


def test_refuses_to_start_without_relay_keys(tmp_path: Path) -> None:
    done = _start_without(tmp_path, USERPILOT_API_KEY=UPSTREAM_KEY)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "RELAY_API_KEYS is not set" in out
    assert UPSTREAM_KEY not in out


def test_refuses_a_bad_key_list_without_echoing_it(tmp_path: Path) -> None:
    done = _start_without(
        tmp_path, USERPILOT_API_KEY=UPSTREAM_KEY, RELAY_API_KEYS="svc:superuser:plain-secret-123"
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "role must be 'ingest' or 'admin'" in out
    assert "plain-secret-123" not in out


def test_two_processes_never_share_one_sqlite_file(relay_factory: object, tmp_path: Path) -> None:
    relay = relay_factory()  # type: ignore[operator]
    if not relay.env["RELAY_DATABASE_URL"].startswith("sqlite"):
        pytest.skip("SQLite only: PostgreSQL is made for several replicas")
    env = {**relay.env}
    done = _start_without(tmp_path, **env)
    assert done.returncode != 0
    assert "another relay process already uses the SQLite file" in done.stdout + done.stderr
