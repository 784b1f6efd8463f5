"""The erasure driver: forgets erased companies in the relay, then in Userpilot.

Each pass leases the running erasures that are due (one replica drives each), and for each one
not yet purged forgets its companies a chunk per transaction (`store.erasures.purge_chunk`,
which waits while any of them is in flight: a real-time call leased, a bulk job holding it),
then checkpoints the SQLite WAL. Purged erasures' companies go to Userpilot's
`DELETE /v1/companies` together, at most `MAX_IDS` a request and one request per
`RELAY_ERASURE_REQUEST_INTERVAL_SECONDS` across replicas (the store's pacing row, apart from
the identify budget). 429, 5xx and no answer back off and retry; a 400 to a request of several
erasures sends each of them alone, so one bad erasure does not fail the others; any other
refusal fails the erasures with the reason. Suppression (from the erasure's commit) and the
purge before the delete mean no identify of an erased company reaches Userpilot after its
delete. Logs name the erasure and counts, never a company id. docs/erasure.md says it for
operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time

from app.config import Settings
from app.delivery.retry import backoff_delay
from app.metrics import COMPANIES_ERASED, ERASURE_OLDEST_RUNNING, ERASURE_REQUESTS, ERASURES
from app.store.store import Store
from app.userpilot.client import UserpilotClient, next_deletion_run

log = logging.getLogger("userpilot_relay.erasure")

MAX_IDS = 1000  # company ids per delete request (Userpilot documents no limit)
BUSY_DELAY = 1.0  # seconds before looking again at an erasure whose company is in flight
RETRYABLE = frozenset({408, 409, 425, 429})


class ErasureDriver:
    """Started and stopped with the dispatcher."""

    def __init__(self, *, store: Store, client: UserpilotClient, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.owner = f"erasure:{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """An erasure was accepted: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("erasure pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.relay_erasure_poll_seconds
                )

    async def run_once(self) -> None:
        """One pass: purge what is due, then send the deletes of what is purged."""
        oldest = await self.store.erasures.oldest_running()
        ERASURE_OLDEST_RUNNING.set(0 if oldest is None else max(0.0, time.time() - oldest))
        leased = await self.store.erasures.lease(
            owner=self.owner, seconds=self.settings.relay_lease_seconds
        )
        if not leased:
            return
        ready: list[str] = []
        waiting: list[str] = []
        for erasure_id, purged in leased:
            if purged or await self._purge(erasure_id):
                ready.append(erasure_id)
            else:
                waiting.append(erasure_id)
        if waiting:
            await self.store.erasures.release(waiting, owner=self.owner, delay=BUSY_DELAY)
        while ready:
            ready = await self._send(ready)

    async def _purge(self, erasure_id: str) -> bool:
        """Forget the erasure's companies; False while one of them is in flight."""
        forgotten = 0
        while True:
            n = await self.store.erasures.purge_chunk(erasure_id)
            if n is None:
                log.info(
                    "erasure waits: a company is in flight",
                    extra={"erasure_id": erasure_id, "purged": forgotten},
                )
                return False
            if n == 0:
                break
            forgotten += n
        await self.store.erasures.after_purge()
        log.info(
            "erasure purged the relay's data",
            extra={"erasure_id": erasure_id, "companies": forgotten},
        )
        return True

    async def _send(self, erasure_ids: list[str]) -> list[str]:
        """One delete request for up to `MAX_IDS` companies; answers the erasures still to send."""
        batch = await self.store.erasures.to_send(erasure_ids, limit=MAX_IDS)
        if not batch.items:
            return []
        slot = await self.store.erasures.reserve_slot(
            self.settings.relay_erasure_request_interval_seconds
        )
        wait = slot - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        ids = [company for _, _, company in batch.items]
        result = await self.client.delete_companies(ids)
        involved = batch.erasure_ids
        if result.ok:
            ERASURE_REQUESTS.labels(result="accepted").inc()
            accepted = time.time()
            done = await self.store.erasures.record_sent(
                batch,
                status=int(result.status or 0),
                request_id=result.request_id,
                accepted_at=accepted,
                scheduled_for=next_deletion_run(accepted),
            )
            log.info(
                "Userpilot accepted an erasure delete",
                extra={
                    "erasures": len(involved),
                    "companies": len(ids),
                    "request_id": result.request_id,
                },
            )
            if done:  # their ids were dropped: no copy left in the WAL either
                await self.store.erasures.after_purge()
            for erasure_id, count in done:
                ERASURES.labels(outcome="completed").inc()
                COMPANIES_ERASED.inc(count)
                log.info("erasure completed", extra={"erasure_id": erasure_id, "companies": count})
            return erasure_ids
        status = result.status
        error = f"Userpilot answered {status}" if status else f"no answer: {result.error}"
        if status is None or status >= 500 or status in RETRYABLE:
            ERASURE_REQUESTS.labels(result="throttled" if status == 429 else "error").inc()
            settings = self.settings

            def delay_for(attempts: int) -> float:
                return result.retry_after or backoff_delay(
                    attempts,
                    base=settings.relay_retry_base_seconds,
                    cap=settings.relay_retry_max_seconds,
                )

            delay = await self.store.erasures.retry_later(
                involved, error=error[:500], status=status, delay_for=delay_for
            )
            log.warning(
                "erasure delete will be retried",
                extra={"erasures": len(involved), "status": status, "delay": round(delay, 2)},
            )
            return []
        ERASURE_REQUESTS.labels(result="refused").inc()
        if status == 400 and len(involved) > 1:
            # One bad erasure must not fail the others of its request: each alone, then only
            # those Userpilot refuses on their own fail.
            log.warning(
                "Userpilot refused a delete of several erasures: sending each alone",
                extra={"erasures": len(involved), "request_id": result.request_id},
            )
            for erasure_id in involved:
                alone = [erasure_id]
                while alone:
                    alone = await self._send(alone)
            return []
        # Userpilot's own words stay out of the audit record: they may name a company it kept.
        failed = await self.store.erasures.fail(
            involved, error=error[:500], status=status, request_id=result.request_id
        )
        ERASURES.labels(outcome="failed").inc(failed)
        await self.store.erasures.after_purge()
        log.error(
            "Userpilot refused an erasure delete: the erasures failed",
            extra={"erasures": len(involved), "status": status, "request_id": result.request_id},
        )
        return []
