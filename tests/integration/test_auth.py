"""Relay keys and roles, in process over the real app (`tests/inprocess.py`): the store does not
change who may call what, so these run on SQLite only. The relay refusing to run open, or to
share its SQLite file, is about the process: those start real ones."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.inprocess import InProcessRelay, run
from tests.pg import SQLITE_ONLY
from tests.relay import ADMIN_KEY, INGEST_KEY, ROOT, UPSTREAM_KEY

BODY = {"company_id": "acme", "metadata": {"plan": "pro"}}


def test_missing_key_is_401_with_challenge(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            r = await relay.post("/companies", key=None, json=BODY)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"] == "unauthorized"
            assert (await relay.store.deliveries.stats()).queued == 0

    run(main())


def test_unknown_or_malformed_keys_are_401(sqlite_url: str) -> None:
    headers = ["Bearer not-a-key", "Basic c3ZjOmluZ2VzdA==", "Bearer", f"Token {INGEST_KEY}"]

    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for header in headers:
                r = await relay.post(
                    "/companies", key=None, json=BODY, headers={"Authorization": header}
                )
                assert r.status_code == 401, header
                assert "www-authenticate" in r.headers, header
            assert (await relay.store.deliveries.stats()).queued == 0

    run(main())


def test_roles(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            assert (await relay.post("/companies", key=ADMIN_KEY, json=BODY)).status_code == 403
            assert (await relay.get("/deliveries?status=dead")).status_code == 403
            assert (await relay.post("/deliveries/replay")).status_code == 403
            created = await relay.post("/companies", json=BODY)
            assert created.status_code == 202
            delivery = created.json()["id"]
            for key in (INGEST_KEY, ADMIN_KEY):
                assert (await relay.get(f"/deliveries/{delivery}", key=key)).status_code == 200
            assert (await relay.get("/deliveries?status=dead", key=ADMIN_KEY)).status_code == 200

    run(main())


def test_hashed_keys_and_caller_name_in_metrics(sqlite_url: str) -> None:
    digest = hashlib.sha256(b"hashed-caller-key").hexdigest()
    sample: dict[str, Any] = {
        "route": "/companies",
        "method": "POST",
        "caller": "billing",
        "status": "202",
    }

    async def main() -> None:
        async with InProcessRelay(
            sqlite_url, relay_api_keys=f"billing:ingest:sha256:{digest}"
        ) as relay:
            before = await relay.metric("userpilot_relay_http_requests_total", **sample)
            r = await relay.post("/companies", key="hashed-caller-key", json=BODY)
            assert r.status_code == 202
            assert (await relay.post("/companies", key=digest, json=BODY)).status_code == 401
            after = await relay.metric("userpilot_relay_http_requests_total", **sample)
            assert after - before == 1

    run(main())


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


@SQLITE_ONLY
def test_two_processes_never_share_one_sqlite_file(relay_factory: Any, tmp_path: Path) -> None:
    relay = relay_factory()
    env = {**relay.env}
    done = _start_without(tmp_path, **env)
    assert done.returncode != 0
    assert "another relay process already uses the SQLite file" in done.stdout + done.stderr


# --- scoped reads (from the adversarial review) --------------------------------------------------


OTHER_KEY = "other-ingest-key-55aa"


TWO_CALLERS = f"svc:ingest:{INGEST_KEY},other:ingest:{OTHER_KEY},ops:admin:{ADMIN_KEY}"


def test_an_ingest_key_reads_only_what_it_stored(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, relay_api_keys=TWO_CALLERS) as relay:
            mine = (await relay.post("/companies", json={"company_id": "s1"})).json()["id"]
            batch = (
                await relay.post("/companies/bulk", json={"companies": [{"company_id": "s2"}]})
            ).json()["batch_id"]
            for path in (f"/deliveries/{mine}", f"/batches/{batch}", f"/deliveries/{batch}.0"):
                assert (await relay.get(path)).status_code == 200, path
                other = await relay.get(path, key=OTHER_KEY)
                assert other.status_code == 404, path
                assert "s1" not in other.text and "s2" not in other.text
                assert (await relay.get(path, key=ADMIN_KEY)).status_code == 200, path

    run(main())
