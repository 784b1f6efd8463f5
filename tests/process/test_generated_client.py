"""A client generated from the app's OpenAPI document by openapi-python-client (the common
Python generator) has every company route, and sends real updates to a real relay with it.

The relay runs in this process: `httpx.ASGITransport` over `create_app(settings)`, its lifespan
entered here (the transport does not run it), with a real SQLite store in tmp_path. Nothing is
delivered upstream (`USERPILOT_ENDPOINT` is a closed local port): delivery is not under test.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.inprocess import WithState
from tests.relay import INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "relay_generated_client"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
OPERATIONS = sorted(
    (method, path)
    for path, item in create_app().openapi()["paths"].items()
    for method in item
    if method in METHODS
)

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        not GENERATOR.exists() and not os.environ.get("CI"),
        reason=(
            f"openapi-python-client is not installed next to {sys.executable} "
            "(scripts/setup installs it with the dev extras); CI always runs this test"
        ),
    ),
]


def _operation_modules(package: Path) -> dict[tuple[str, str], str]:
    """(method, path) -> the generated module (dotted, under PACKAGE) that calls it."""
    found: dict[tuple[str, str], str] = {}
    call = re.compile(r'"method":\s*"(\w+)",\s*"url":\s*"([^"]*)"')
    for module in sorted((package / "api").rglob("*.py")):
        match = call.search(module.read_text())
        if match is not None:
            dotted = ".".join(module.relative_to(package.parent).with_suffix("").parts)
            found[(match.group(1), match.group(2))] = dotted
    return found


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The client package generated from the app's document, importable as PACKAGE."""
    assert GENERATOR.exists(), f"openapi-python-client is missing: {GENERATOR}"
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(create_app().openapi(), indent=2))
    config = tmp_path / "generator.json"  # JSON is YAML; no formatter hooks needed
    config.write_text(json.dumps({"post_hooks": []}))
    output = tmp_path / "generated" / PACKAGE
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(output),
            "--meta",
            "none",
            "--config",
            str(config),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = done.stdout + done.stderr
    # A dangling `$ref` is a warning ("Could not find reference") and a skipped endpoint.
    assert done.returncode == 0, f"openapi-python-client failed:\n{log}"
    assert "Could not find reference" not in log and "WARNING" not in log, log
    monkeypatch.syspath_prepend(str(output.parent))
    try:
        yield output
    finally:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _module(dotted: str) -> ModuleType:
    return importlib.import_module(dotted)


def _settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        userpilot_api_key=UPSTREAM_KEY,
        userpilot_endpoint="http://127.0.0.1:9",
        relay_api_keys=RELAY_KEYS,
        relay_database_url=f"sqlite:///{tmp_path / 'relay.db'}",
        relay_shutdown_grace_seconds=1,
    )


def test_generated_client_has_every_company_route(generated: Path) -> None:
    operations = _operation_modules(generated)
    assert ("post", "/companies") in OPERATIONS and ("post", "/companies/bulk") in OPERATIONS
    for method, path in OPERATIONS:
        assert (method, path) in operations, f"the generated client lacks {method.upper()} {path}"
    assert (generated / "models" / "company_in.py").exists()
    assert (generated / "models" / "bulk_in.py").exists()


def test_generated_client_sends_updates_to_a_real_relay(generated: Path, tmp_path: Path) -> None:
    operations = _operation_modules(generated)
    post_company = _module(operations[("post", "/companies")])
    post_bulk = _module(operations[("post", "/companies/bulk")])
    get_delivery = _module(operations[("get", "/deliveries/{delivery_id}")])
    get_batch = _module(operations[("get", "/batches/{batch_id}")])
    client_module = _module(f"{PACKAGE}.client")
    models = _module(f"{PACKAGE}.models")

    metadata = {"plan": "pro", "seats": 42, "mrr": 99.5, "trial": False, "churned": None}

    async def scenario() -> None:
        app = create_app(_settings(tmp_path))
        async with app.router.lifespan_context(app) as state:
            transport = httpx.ASGITransport(app=WithState(app, dict(state or {})))
            client = client_module.AuthenticatedClient(
                base_url="http://relay",
                token=INGEST_KEY,
                raise_on_unexpected_status=True,
                httpx_args={"transport": transport},
            )
            async with client:
                body = models.CompanyIn.from_dict({"company_id": "acme", "metadata": metadata})
                answer = await post_company.asyncio_detailed(client=client, body=body)
                assert answer.status_code == 202, answer.content
                assert isinstance(answer.parsed, models.Accepted), answer.parsed
                delivery_id = answer.parsed.id
                assert answer.parsed.status.value == "queued"

                shown = await get_delivery.asyncio_detailed(delivery_id, client=client)
                assert shown.status_code == 200, shown.content
                delivery = shown.parsed
                assert isinstance(delivery, models.DeliveryOut), delivery
                assert delivery.id == delivery_id
                assert delivery.company_id == "acme"
                assert delivery.source == "api"
                assert delivery.caller == "svc"
                assert delivery.metadata.to_dict() == metadata
                assert delivery.status.value in ("queued", "delivering")

                bulk = models.BulkIn.from_dict(
                    {
                        "companies": [
                            {"company_id": "globex", "metadata": {"plan": "free"}},
                            {"company_id": "initech", "metadata": {"seats": 7}},
                        ]
                    }
                )
                accepted = await post_bulk.asyncio_detailed(client=client, body=bulk)
                assert accepted.status_code == 202, accepted.content
                assert isinstance(accepted.parsed, models.BulkAccepted), accepted.parsed
                assert accepted.parsed.accepted == 2
                batch_id = accepted.parsed.batch_id

                batch = await get_batch.asyncio_detailed(batch_id, client=client)
                assert batch.status_code == 200, batch.content
                item = await get_delivery.asyncio_detailed(f"{batch_id}.1", client=client)
                assert item.status_code == 200, item.content
                assert isinstance(item.parsed, models.DeliveryOut)
                assert item.parsed.company_id == "initech"
                assert item.parsed.metadata.to_dict() == {"seats": 7}
                assert item.parsed.batch_id == batch_id

                refused = models.CompanyIn.from_dict({"company_id": "acme", "metadata": {}})
                refused.metadata["nested"] = {"no": "objects"}  # the relay says why
                rejected = await post_company.asyncio_detailed(client=client, body=refused)
                assert rejected.status_code == 422, rejected.content
                assert isinstance(rejected.parsed, models.ErrorBody)

    asyncio.run(scenario())
