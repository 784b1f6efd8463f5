"""`openapi.json` is the app's schema, and it tells the truth: every status a route answers is
documented with the body actually returned (clients and fuzzers are generated from it)."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema
import pytest

from app.main import create_app
from tests.relay import ADMIN_KEY, ROOT, RelayProcess

SPEC_PATH = ROOT / "openapi.json"


def render() -> str:
    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"


def test_committed_openapi_matches_the_app() -> None:
    current = render()
    if os.environ.get("UPDATE_OPENAPI") == "1":
        SPEC_PATH.write_text(current)
    assert SPEC_PATH.exists(), "openapi.json is missing: run scripts/openapi"
    assert SPEC_PATH.read_text() == current, "openapi.json is stale: run scripts/openapi"


SPEC: dict[str, Any] = json.loads(render())
AUTHED = {
    ("post", "/companies"),
    ("post", "/companies/bulk"),
    ("get", "/deliveries/{delivery_id}"),
    ("get", "/batches/{batch_id}"),
    ("get", "/deliveries"),
    ("post", "/deliveries/{delivery_id}/replay"),
    ("post", "/deliveries/replay"),
    ("delete", "/deliveries/{delivery_id}"),
    ("delete", "/deliveries"),
}
WITH_BODY = {("post", "/companies"), ("post", "/companies/bulk")}


@pytest.mark.parametrize(("method", "path"), sorted(AUTHED))
def test_authenticated_routes_document_401_and_403(method: str, path: str) -> None:
    responses = SPEC["paths"][path][method]["responses"]
    for status in ("401", "403", "422", "503"):
        assert status in responses, f"{method} {path} lacks {status}"


@pytest.mark.parametrize(("method", "path"), sorted(WITH_BODY))
def test_body_routes_document_413_415_422(method: str, path: str) -> None:
    operation = SPEC["paths"][path][method]
    for status in ("413", "415", "422", "503"):
        assert status in operation["responses"]
    assert operation["requestBody"]["required"] is True


def test_no_secret_or_default_validation_schema_in_the_document() -> None:
    text = json.dumps(SPEC)
    assert "HTTPValidationError" not in text  # our 422 body is ErrorBody, not FastAPI's


def _schema_for(method: str, path: str, status: int) -> dict[str, Any]:
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered undocumented {status}"
    content = responses[str(status)].get("content", {})
    schema = dict(content.get("application/json", {}).get("schema", {}))
    schema["components"] = SPEC["components"]
    return schema


def test_real_answers_match_their_documented_schema(relay: RelayProcess) -> None:
    """Drive every route into each answer it can give and validate the body against the spec."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    good = {"company_id": "acme", "metadata": {"plan": "pro"}}
    calls += [
        ("post", "/companies", {"json": good}),
        ("post", "/companies", {"json": good, "key": None}),
        ("post", "/companies", {"json": good, "key": ADMIN_KEY}),
        ("post", "/companies", {"content": b"x", "headers": {"Content-Type": "text/plain"}}),
        ("post", "/companies", {"json": {"company_id": "a", "metadata": {"n": [1]}}}),
        ("post", "/companies", {"json": {"company_id": "a", "metadata": {"n": "x" * 2_000_000}}}),
        ("post", "/companies/bulk", {"json": {"companies": [good]}}),
        ("post", "/companies/bulk", {"json": {"companies": [{"company_id": ""}]}}),
        ("post", "/companies/bulk", {"json": {"companies": [good]}, "key": "nope"}),
        ("get", "/deliveries", {"key": ADMIN_KEY, "params": {"status": "queued"}}),
        ("get", "/deliveries", {"key": ADMIN_KEY, "params": {"limit": 0}}),
        ("get", "/deliveries", {}),
        ("get", "/deliveries/{delivery_id}", {"path": "/deliveries/nope"}),
        ("get", "/batches/{batch_id}", {"path": "/batches/nope"}),
        (
            "post",
            "/deliveries/{delivery_id}/replay",
            {"path": "/deliveries/x/replay", "key": ADMIN_KEY},
        ),
        ("post", "/deliveries/replay", {"key": ADMIN_KEY}),
        ("delete", "/deliveries", {"key": ADMIN_KEY, "params": {"status": "dead"}}),
        ("delete", "/deliveries", {"key": ADMIN_KEY, "params": {"status": "queued"}}),
        ("delete", "/deliveries/{delivery_id}", {"path": "/deliveries/x", "key": ADMIN_KEY}),
        ("get", "/healthz", {"key": None}),
        ("get", "/readyz", {"key": None}),
    ]
    first = relay.post_company("acme", {"a": 1}, headers={"Prefer": "wait=10"})
    calls.append(
        ("get", "/deliveries/{delivery_id}", {"path": f"/deliveries/{first.json()['id']}"})
    )
    replay = relay.request("POST", f"/deliveries/{first.json()['id']}/replay", key=ADMIN_KEY)
    _check("post", "/deliveries/{delivery_id}/replay", replay)
    _check("post", "/companies", first)
    for method, template, options in calls:
        options = dict(options)
        path = options.pop("path", template)
        response = relay.request(method.upper(), path, **options)
        _check(method, template, response)


def _check(method: str, template: str, response: Any) -> None:
    schema = _schema_for(method, template, response.status_code)
    if response.headers.get("content-type", "").startswith("application/json"):
        jsonschema.Draft202012Validator(schema).validate(response.json())
