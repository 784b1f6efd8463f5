"""Pure logic: key parsing, merging, backoff, outcome classification, Prefer parsing."""

from __future__ import annotations

import hashlib

import pytest

from app.api.companies import parse_wait
from app.api.deps import find_key
from app.config import REGION_URLS, Settings, parse_api_keys
from app.delivery.merge import JobMerge, merge_claim, read_chunks
from app.delivery.retry import backoff_delay, classify
from app.domain.models import Claim, ClaimedUpdate
from app.userpilot.client import UpstreamResult, parse_retry_after


def test_api_keys_plain_and_hashed() -> None:
    digest = hashlib.sha256(b"k2").hexdigest()
    keys = parse_api_keys(f" a:ingest:k1 , b:admin:sha256:{digest.upper()} ,")
    assert [(k.name, k.role) for k in keys] == [("a", "ingest"), ("b", "admin")]
    assert find_key(keys, "k1") is keys[0]
    assert find_key(keys, "k2") is keys[1]
    assert find_key(keys, digest) is None
    assert "k1" not in repr(keys)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "names no caller"),
        ("a:ingest", "name:role:key"),
        ("a:root:k", "role must be"),
        ("a:ingest:k,a:admin:j", "used twice"),
        ("a:ingest:k,b:admin:k", "same key"),
        ("a:ingest:sha256:abc", "64 hex"),
        ("a b:ingest:k", "name must be"),
    ],
)
def test_api_keys_refused(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_api_keys(raw)


def _settings(**kw: object) -> Settings:
    return Settings(userpilot_api_key="k", relay_api_keys="a:ingest:k", **kw)  # type: ignore[arg-type]


def test_region_choice() -> None:
    assert _settings().upstream_base_url == "https://analytex.userpilot.io"
    assert _settings(userpilot_region="EU").upstream_base_url == "https://analytex-eu.userpilot.io"
    assert REGION_URLS["eu"] == "https://analytex-eu.userpilot.io"
    custom = _settings(userpilot_region="eu", userpilot_endpoint="https://acme.userpilot.io/")
    assert custom.upstream_base_url == "https://acme.userpilot.io"
    with pytest.raises(ValueError):
        _settings(userpilot_region="asia")
    with pytest.raises(ValueError):
        _settings(userpilot_endpoint="analytex.userpilot.io")
    with pytest.raises(ValueError):
        _settings(relay_database_url="sqlite:///:memory:")


def _claim(
    *updates: tuple[int, dict[str, object]], versions: dict[str, int] | None = None
) -> Claim:
    return Claim(
        company_id="c",
        updates=[ClaimedUpdate(id=str(s), seq=s, metadata=m, attempts=1) for s, m in updates],  # type: ignore[arg-type]
        versions=versions or {},
    )


def test_merge_later_wins_and_null_is_kept() -> None:
    merged, versions = merge_claim(_claim((1, {"a": 1, "b": 2}), (2, {"a": None, "c": 3})))
    assert merged == {"a": None, "b": 2, "c": 3}
    assert versions == {"a": 2, "b": 1, "c": 2}


def test_merge_skips_keys_a_newer_delivered_update_set() -> None:
    claim = _claim((5, {"plan": "old", "seats": 3}), (9, {"x": 1}), versions={"plan": 7, "x": 2})
    merged, _ = merge_claim(claim)
    assert merged == {"seats": 3, "x": 1}


def test_a_job_merged_chunk_by_chunk_equals_one_merge_of_all_its_updates() -> None:
    updates = [
        (s, {"n": s, f"p{s % 3}": s, **({"gone": None} if s == 7 else {})}) for s in range(9)
    ]
    whole, whole_versions = merge_claim(_claim(*updates, versions={"p1": 5}))
    merged = JobMerge()
    for start in range(0, 9, 2):  # the company's updates read over five chunks
        merged.add([_claim(*updates[start : start + 2], versions={"p1": 5})])
    merged.add([_claim()])  # a claim left empty (its updates refused) adds nothing
    [row] = merged.rows
    assert (row.metadata, row.sent_versions, row.updates) == (whole, whole_versions, 9)
    assert row.metadata == {"n": 8, "p0": 6, "p1": 7, "p2": 8, "gone": None}


def test_a_jobs_companies_are_read_in_chunks_of_about_a_limit_of_updates() -> None:
    companies = [("a", 3), ("b", 4), ("c", 10), ("d", 1), ("e", 1)]
    assert read_chunks(companies, limit=5) == [["a"], ["b"], ["c"], ["d", "e"]]
    assert read_chunks(companies, limit=100) == [["a", "b", "c", "d", "e"]]
    assert read_chunks([], limit=5) == []


def test_backoff_grows_caps_and_jitters() -> None:
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (20, 30)]:
        delays = [backoff_delay(attempt, base=1, cap=30) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def _result(status: int | None) -> UpstreamResult:
    return UpstreamResult(status=status, error=None, request_id=None, retry_after=None, elapsed=0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (408, "retry"),
        (None, "retry"),
        (400, "dead"),
        (401, "dead"),
        (403, "dead"),
        (404, "dead"),
        (413, "dead"),
    ],
)
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(_result(status)) == outcome


def test_parse_wait_and_retry_after() -> None:
    assert parse_wait(None) is None
    assert parse_wait("wait=5") == 5
    assert parse_wait("respond-async, wait=100") == 30
    assert parse_wait("return=minimal") is None
    assert parse_retry_after("3") == 3
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"company_id": "a"}',
        b'{"company_id": "a", "metadata": {"x": 1, "y": null, "z": true, "w": 1.5, "s": ""}}',
        b'{"company_id": " ", "metadata": {}}',
        b'{"company_id": "", "metadata": {}}',
        b'{"company_id": 1}',
        b'{"company_id": "a", "metadata": {"": 1}}',
        b'{"company_id": "a", "metadata": {" ": 1}}',
        b'{"company_id": "a", "metadata": {"x": [1]}}',
        b'{"company_id": "a", "metadata": {"x": {"y": 1}}}',
        b'{"company_id": "a", "metadata": {"x": NaN}}',
        b'{"company_id": "a", "metadata": {"x": 1e400}}',
        b'{"company_id": "a", "metadata": {"x": 123456789012345678901234567890}}',
        b'{"company_id": "a", "metadata": {"x": 18446744073709551615}}',
        b'{"company_id": "a", "metadata": null}',
        b'{"company_id": "a", "extra": 1}',
        b'{"companyId": "a"}',
        b'[{"company_id": "a"}]',
        b'{"company_id": "' + b"x" * 256 + b'"}',
        b'{"company_id": "a", "metadata": {"x": 1, "x": [2]}}',
    ],
)
def test_fast_path_accepts_only_what_the_models_accept(body: bytes) -> None:
    """The accelerator never accepts what the authoritative models refuse, nor disagrees."""
    from pydantic import ValidationError

    from app.api.schemas import BulkIn, CompanyIn, fast_companies

    for bulk, wrapped in ((False, body), (True, b'{"companies": [' + body + b"]}")):
        fast = fast_companies(wrapped, bulk=bulk)
        try:
            model = (
                BulkIn.model_validate_json(wrapped)
                if bulk
                else CompanyIn.model_validate_json(wrapped)
            )
        except ValidationError:
            assert fast is None, wrapped
            continue
        if fast is not None:
            companies = model.companies if isinstance(model, BulkIn) else [model]
            assert fast == [(c.company_id, c.metadata) for c in companies]


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == 30
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=1_000_000) == 0
    assert parse_retry_after("99999") == 3600


def test_a_lease_must_outlast_the_call() -> None:
    with pytest.raises(ValueError, match="RELAY_LEASE_SECONDS must exceed"):
        _settings(relay_lease_seconds=5, relay_upstream_timeout_seconds=10)
    assert _settings(relay_lease_seconds=3, relay_upstream_timeout_seconds=1)
