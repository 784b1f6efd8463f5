"""Ways out of a bulk job's doubt or of a job that never ends, as a store part (`part.py`).

Userpilot's job list settles an unanswered upload (`known_upstream_ids` tells the relay's own
jobs apart; `certain` clears the doubt), and an operator may abandon a job: it is recorded
`abandoned` with the key's name and time, and its rows go out again as real-time calls. Also
the recovery after an outage (`retry_now`) and a completed job's shortfall.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.models import BulkJob
from app.store import job_queries as jq
from app.store.jobs import _job, _owned, _text
from app.store.part import StorePart
from app.store.sql import Plan, Statement


def abandon(job_id: str, by: str) -> Plan[tuple[BulkJob | None, bool]]:
    """An operator ends the job (`by`: the relay key's name) and its rows go out again as
    real-time calls, merged with anything newer for their companies. Answers the job and
    whether this ended it (False: unknown, or already finished)."""
    yield Statement(jq.LOCK_JOBS)
    job = yield from _job(job_id)
    if job is None or job.status not in ("waiting", "running"):
        return job, False
    who = _text(by, 200)
    outcome = f"abandoned by {who}: {job.rows} companies sent again as real-time calls"
    params = {"id": job_id, "by": who, "outcome": _text(outcome, 2000)}
    if not (yield Statement(jq.JOB_ABANDONED, params)).rowcount:
        return job, False
    error = _text(f"bulk job {job_id} abandoned by {who}")
    yield Statement(jq.JOB_ALL_ROWS_TO_REALTIME, {"job": job_id, "error": error})
    return (yield from _job(job_id)), True


def certain(job: BulkJob, owner: str) -> Plan[bool]:
    """No upload of the job runs at Userpilot (its job list says so): doubt cleared."""
    return (yield Statement(jq.JOB_CERTAIN, _owned(job, owner, "waiting"))).rowcount > 0


def known_upstream_ids(ids: Sequence[str]) -> Plan[set[str]]:
    """Which of Userpilot's job ids the relay recorded for one of its jobs."""
    if not ids:
        return set()
    return {r[0] for r in (yield Statement(jq.KNOWN_UPSTREAM_IDS, {"ids": list(ids)})).rows}


def retry_now(*, one_company: bool) -> Plan[int]:
    """Bring updates waiting out a backoff forward: every one, or the oldest one's company."""
    if one_company:
        return (yield Statement(jq.RETRY_OLDEST)).rowcount
    moved = (yield Statement(jq.RETRY_NOW)).rowcount
    yield Statement(jq.JOBS_RETRY_NOW)
    return moved


def shortfall(job: BulkJob, note: str) -> Plan[bool]:
    """A completed job that Userpilot reported short: the shortfall in its outcome and error."""
    params = {"id": job.id, "note": _text(note)}
    return (yield Statement(jq.JOB_SHORTFALL, params)).rowcount > 0


class JobRecovery(StorePart):
    """The job list's verdict on a job in doubt, and an operator's abandon."""

    async def certain(self, job: BulkJob, *, owner: str) -> bool:
        """Userpilot's job list shows no job from the job's unanswered upload: not in doubt."""
        return await self._write(lambda: certain(job, owner))

    async def known_upstream_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these Userpilot job ids belong to jobs the relay recorded."""
        return await self._read(lambda: known_upstream_ids(ids))

    async def abandon(self, job_id: str, *, by: str) -> tuple[BulkJob | None, bool]:
        """End an unfinished job for an operator (`by`) and send its rows again real-time
        (the feeder finds them at its next look); answers the job (None: unknown) and whether
        this call ended it."""
        return await self._write(lambda: abandon(job_id, by))

    async def shortfall(self, job: BulkJob, note: str) -> bool:
        """Record on a completed job that Userpilot reported fewer rows done than sent."""
        return await self._write(lambda: shortfall(job, note))
