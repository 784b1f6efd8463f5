"""`openapi.json` is the app's schema, and it tells the truth: every status a route answers is
documented with the body actually returned (clients and fuzzers are generated from it)."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema
import pytest

from app.main import create_app
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, run
from tests.relay import ADMIN_KEY, ROOT

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


def test_real_answers_match_their_documented_schema(sqlite_url: str, sim: SimulatorProcess) -> None:
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

    async def main() -> None:
        async with InProcessRelay(sqlite_url, endpoint=sim.url) as relay:
            first = await relay.post_company("acme", {"a": 1}, headers={"Prefer": "wait=10"})
            first_id = first.json()["id"]
            calls.append(("get", "/deliveries/{delivery_id}", {"path": f"/deliveries/{first_id}"}))
            replay = await relay.post(f"/deliveries/{first_id}/replay", key=ADMIN_KEY)
            for template, answer in (
                ("/deliveries/{delivery_id}/replay", replay),
                ("/companies", first),
            ):
                _check("post", template, answer)
                checked.add(("post", template, answer.status_code))
            for method, template, options in calls:
                options = dict(options)
                path = options.pop("path", template)
                response = await relay.request(method.upper(), path, **options)
                _check(method, template, response)
                checked.add((method, template, response.status_code))

    checked: set[tuple[str, str, int]] = set()
    run(main())
    # Every kind of answer was produced, not just the happy ones.
    assert {s for _, _, s in checked} >= {200, 202, 401, 403, 404, 409, 413, 415, 422}, checked


def _check(method: str, template: str, response: Any) -> None:
    schema = _schema_for(method, template, response.status_code)
    if response.headers.get("content-type", "").startswith("application/json"):
        jsonschema.Draft202012Validator(schema).validate(response.json())


def _refs(node: Any, where: str = "#") -> list[tuple[str, str]]:
    """Every `$ref` in the document, with the JSON pointer of the object holding it."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append((where, value))
            else:
                found += _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _refs(value, f"{where}/{index}")
    return found


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            assert token.isdigit() and int(token) < len(node), f"{ref}: no item {token}"
            node = node[int(token)]
        else:
            assert isinstance(node, dict) and token in node, f"{ref}: no {token!r}"
            node = node[token]
    return node


def test_every_reference_in_the_document_resolves() -> None:
    """Generators skip an operation whose schema is a dangling `$ref` (as POST /companies was)."""
    refs = _refs(SPEC)
    for where, ref in refs:
        target = _resolve(SPEC, ref)
        assert isinstance(target, dict), f"{where}: {ref} is not a schema"
    used = {ref for _, ref in refs}
    for name in ("CompanyIn", "BulkIn"):
        assert f"#/components/schemas/{name}" in used


def test_request_body_schemas_are_the_models_and_keep_flat_metadata() -> None:
    from app.api.schemas import BulkIn, CompanyIn

    schemas = SPEC["components"]["schemas"]
    assert list(schemas) == sorted(schemas), "components/schemas is kept in a stable order"
    assert "$defs" not in json.dumps(SPEC), "nested definitions are hoisted into components"
    company = schemas["CompanyIn"]
    assert company == CompanyIn.model_json_schema(ref_template="#/components/schemas/{model}")
    assert company["additionalProperties"] is False
    assert company["properties"]["metadata"]["additionalProperties"] == {
        "type": ["string", "number", "boolean", "null"]
    }
    bulk = BulkIn.model_json_schema(ref_template="#/components/schemas/{model}")
    assert bulk.pop("$defs") == {"CompanyIn": company}
    assert schemas["BulkIn"] == bulk
    assert bulk["properties"]["companies"]["items"] == {"$ref": "#/components/schemas/CompanyIn"}

    def valid(body: dict[str, Any], name: str) -> bool:
        schema = {**schemas[name], "components": SPEC["components"]}
        return jsonschema.Draft202012Validator(schema).is_valid(body)

    good = {"company_id": "acme", "metadata": {"plan": "pro", "seats": 3, "trial": None}}
    assert valid(good, "CompanyIn")
    assert valid({"companies": [good]}, "BulkIn")
    assert not valid({"company_id": "acme", "metadata": {"nested": {"a": 1}}}, "CompanyIn")
    assert not valid({"companies": [{"company_id": "acme", "metadata": {"n": [1]}}]}, "BulkIn")
    assert not valid({"companies": []}, "BulkIn")


def test_the_document_is_the_same_every_time() -> None:
    app = create_app()
    assert app.openapi() is app.openapi()  # built once, then cached
    assert render() == render()
