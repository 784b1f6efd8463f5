"""Merging a company's updates: later wins, null kept, newer delivered values skipped; a bulk
job merged chunk by chunk."""

from __future__ import annotations

from app.delivery.merge import JobMerge, merge_claim, read_chunks
from app.domain.models import Claim, ClaimedUpdate


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
