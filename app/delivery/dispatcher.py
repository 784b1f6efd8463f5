"""The dispatcher: takes stored updates to Userpilot, paced, merged, retried, dead-lettered.

One feeder loop reserves a send slot (slots are `60 / RELAY_RATE_LIMIT_PER_MINUTE` seconds
apart, shared through the store by every replica), waits for it, then claims the company that
has waited longest and hands the call to a task; at most `RELAY_DELIVERY_CONCURRENCY` calls are
in flight. Claiming at the last moment lets everything that arrived for the company meanwhile
ride in the same call. While Userpilot looks down the breaker (`breaker.py`) lets one probe out
at a time. Beside the feeder, `bulk.py` drains large backlogs through Userpilot's bulk jobs; its
uploads and polls take send slots from the same pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time

from app.config import Settings
from app.delivery.breaker import Breaker
from app.delivery.bulk import BulkDriver
from app.delivery.erasure import ErasureDriver
from app.delivery.merge import merge_claim
from app.delivery.pacing import Pacer
from app.delivery.refuse import refuse, without_unsendable
from app.delivery.retry import backoff_delay, classify, retry_reason
from app.domain.errors import StoreUnavailable
from app.domain.models import Claim
from app.domain.rules import REFUSED
from app.lifecycle import cancel_and_wait
from app.metrics import (
    DELIVERIES,
    RETRIES,
    UPDATES_MERGED,
    UPSTREAM_AUTH_FAILURES,
    UPSTREAM_THROTTLED,
)
from app.store.deliveries import Retention
from app.store.store import Store
from app.userpilot.client import UpstreamResult, UserpilotClient

log = logging.getLogger("userpilot_relay.dispatcher")

_IDLE_POLL = 0.25
_PRUNE_EVERY = 600.0


def _context(claim: Claim) -> dict[str, object]:
    """What every log line about this claim carries."""
    return {
        "company_id": claim.company_id,
        "delivery_id": claim.updates[-1].id,
        "delivery_ids": claim.ids if len(claim.ids) <= 20 else claim.ids[:20],
        "merged": len(claim.updates),
        "attempt": claim.attempts,
    }


class Dispatcher:
    """Runs inside the service: started and stopped by the lifespan."""

    def __init__(self, *, store: Store, client: UserpilotClient, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._pacer = Pacer(
            settings.relay_rate_limit_per_minute,
            max_pause=settings.relay_max_upstream_pause_seconds,
        )
        self._breaker = Breaker()
        self.bulk = BulkDriver(
            store=store,
            client=client,
            settings=settings,
            pacer=self._pacer,
            breaker=self._breaker,
            owner=self.owner,
        )
        self.erasure = ErasureDriver(store=store, client=client, settings=settings)
        self._claims = itertools.count(1)
        self._single_turn = False  # every other claim puts a single update first
        self._slots = asyncio.Semaphore(settings.relay_delivery_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._store_down = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._feed(), name="dispatcher-feed"),
            asyncio.create_task(self._prune(), name="dispatcher-prune"),
            asyncio.create_task(self.bulk.run(), name="dispatcher-bulk"),
            asyncio.create_task(self.erasure.run(), name="dispatcher-erasure"),
        ]

    async def stop(self) -> None:
        """Stop claiming, let in-flight calls finish within the grace period, release the rest."""
        self._stopping = True
        await cancel_and_wait(self._tasks)
        if self._inflight:
            _, pending = await asyncio.wait(
                self._inflight, timeout=self.settings.relay_shutdown_grace_seconds
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # the feeder ----------------------------------------------------------------------------
    async def _feed(self) -> None:
        settle = self.settings.relay_merge_window_seconds
        while not self._stopping:
            # While Userpilot looks down, one probe at a time (see breaker.py).
            probe = await self._breaker.turn()
            await self._slots.acquire()
            claim: Claim | None = None
            try:
                slot = await self.store.pacing.reserve_send_slot(self._pacer.interval)
                wait = slot - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._pacer.paused():
                    # Userpilot said 429 after this slot was reserved: the next slot the
                    # store gives out starts after the pause.
                    self._slots.release()
                    if probe:
                        self._breaker.probe_unused()
                    continue
                # Fairness: every other call goes to the oldest single update (not from a
                # batch), so one caller's import never holds up another caller's update.
                self._single_turn = not self._single_turn
                # Work stored from now on wakes the feeder from its idle wait at once.
                self.store.signals.work.clear()
                claim = await self._claim(settle)
                if claim is None and probe and await self.store.claims.retry_now(one_company=True):
                    # Everything waits out a backoff: the probe takes the oldest of it.
                    claim = await self._claim(settle)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except StoreUnavailable as exc:
                self._slots.release()
                if probe:
                    self._breaker.probe_unused()
                if not self._store_down:  # one line per outage, not one a second
                    log.warning(
                        "the store is unreachable; delivery paused", extra={"error": str(exc)[:300]}
                    )
                self._store_down = True
                await asyncio.sleep(1.0)
                continue
            except Exception:
                self._slots.release()
                if probe:
                    self._breaker.probe_unused()
                log.exception("claiming from the store failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if self._store_down:
                self._store_down = False
                log.info("the store is back; delivery resumed")
            if claim is None:
                self._slots.release()
                if probe:
                    self._breaker.probe_unused()
                with contextlib.suppress(Exception):  # unused: the next update may take it
                    await self.store.pacing.release_send_slot(slot, self._pacer.interval)
                await self._idle(settle)
                continue
            # This process's own sends are never closer than the interval, however long the
            # claim took: Userpilot counts arrivals, not slots.
            send_at = self._pacer.next_send()
            task = asyncio.create_task(self._deliver(claim, send_at, probe))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    async def _claim(self, settle: float) -> Claim | None:
        return await self.store.claims.claim(
            # One token per claim: a call that outlived its lease cannot record over the
            # claim that took the company over.
            owner=f"{self.owner}:{next(self._claims)}",
            lease_seconds=self.settings.relay_lease_seconds,
            max_merge=self.settings.relay_max_merge,
            settle_seconds=settle,
            single_first=self._single_turn,
        )

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _idle(self, settle: float) -> None:
        """Wait for the store to signal new work (or a retry to come due: the poll)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_IDLE_POLL):
                await self.store.signals.work.wait()
            if self.store.signals.take_waited_on():
                return  # a caller waits for it: claimed at once (nothing else was queued)
            # Something arrived: give its siblings the merge window to join it.
            await asyncio.sleep(settle)

    # one call ------------------------------------------------------------------------------
    async def _deliver(self, claim: Claim, send_at: float, probe: bool = False) -> None:
        result: UpstreamResult | None = None
        try:
            result = await self._call(claim, send_at)
        finally:
            if probe and result is None:
                self._breaker.probe_unused()
        if result is None:
            return
        if self._breaker.record(result, probe=probe):
            # Userpilot is back: whatever waits out a backoff goes now, at full pace.
            with contextlib.suppress(Exception):
                moved = await self.store.claims.retry_now()
                log.info("brought waiting deliveries forward", extra={"deliveries": moved})

    async def _call(self, claim: Claim, send_at: float) -> UpstreamResult | None:
        """Send the claim and record the outcome; answers Userpilot's answer (None: no call)."""
        claim = await without_unsendable(self.store, claim, _context(claim))
        if not claim.updates:
            return None
        metadata, sent_versions = merge_claim(claim)
        context = _context(claim)
        try:
            await asyncio.sleep(max(0.0, send_at - time.time()))
            result = await self.client.identify_company(
                company_id=claim.company_id, metadata=dict(metadata)
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.claims.release(claim))
            raise
        except Exception as exc:  # a bug, not an answer: retry later rather than lose track
            log.exception("delivering failed unexpectedly; retrying", extra=context)
            result = UpstreamResult(
                status=None,
                error=f"relay error: {type(exc).__name__}",
                request_id=None,
                retry_after=None,
                elapsed=0.0,
            )
        context |= {
            "upstream_status": result.status,
            "x_request_id": result.request_id,
            "elapsed_ms": round(result.elapsed * 1000, 1),
        }
        try:
            await self._record(claim, result, sent_versions, context)
        except StoreUnavailable:
            # The lease runs out and the updates are delivered again: nothing is lost.
            log.warning("recording a delivery outcome failed: the store is down", extra=context)
        except Exception as exc:
            # The store cannot hold something in this claim: re-sending it every lease would
            # never end. Dead-letter it with the reason, so that an operator sees it.
            log.exception("the store cannot record this delivery's outcome", extra=context)
            reason = (
                f"{REFUSED}Userpilot answered {result.status}, but the store cannot record "
                f"the outcome ({type(exc).__name__})"
            )
            await refuse(self.store, claim, reason, context, status=result.status)
        return result

    async def _record(
        self,
        claim: Claim,
        result: UpstreamResult,
        sent_versions: dict[str, int],
        context: dict[str, object],
    ) -> None:
        outcome = classify(result)
        count = len(claim.updates)
        if outcome == "delivered":
            assert result.status is not None
            await self.store.claims.mark_delivered(
                claim,
                status=result.status,
                request_id=result.request_id,
                sent_versions=sent_versions,
            )
            DELIVERIES.labels(outcome="delivered").inc(count)
            UPDATES_MERGED.inc(count - 1)
            # After the waiting request (woken by the mark) has run: it answers first.
            asyncio.get_running_loop().call_soon(lambda: log.info("delivered", extra=context))
            return
        error = result.error or "unknown error"
        if outcome == "retry":
            delay = backoff_delay(
                claim.attempts,
                base=self.settings.relay_retry_base_seconds,
                cap=self.settings.relay_retry_max_seconds,
            )
            if result.retry_after is not None:
                delay = self._pacer.capped(result.retry_after)
            if result.status == 429:
                UPSTREAM_THROTTLED.inc()
                until = self._pacer.pause(
                    result.retry_after or delay, "429 on a real-time identify call"
                )
                await self.store.pacing.pause_sending(until, reason=self._pacer.pause_reason)
            RETRIES.labels(reason=retry_reason(result)).inc()
            await self.store.claims.mark_retry(
                claim, status=result.status, error=error, delay=delay
            )
            log.warning(
                "upstream call failed; retrying",
                extra=context | {"error": error, "retry_in_s": round(delay, 2)},
            )
            return
        await self.store.claims.mark_dead(
            claim, status=result.status, error=error, request_id=result.request_id
        )
        DELIVERIES.labels(outcome="dead").inc(count)
        if result.status in (401, 403):
            UPSTREAM_AUTH_FAILURES.inc()
            log.error(
                "Userpilot refused the API key: every delivery will fail until "
                "USERPILOT_API_KEY is fixed",
                extra=context | {"error": error},
            )
        else:
            log.error(
                "Userpilot rejected the update; dead-lettered", extra=context | {"error": error}
            )

    # background chores ---------------------------------------------------------------------
    def _retention(self) -> Retention:
        s = self.settings
        return Retention(
            dead_letters=s.relay_dead_letter_retention_seconds,
            parked_events=s.relay_parked_event_retention_seconds,
            jobs=s.relay_job_retention_seconds,
            values=s.relay_values_retention_seconds,
        )

    async def _prune(self) -> None:
        while not self._stopping:
            retention = self.settings.relay_delivered_retention_seconds
            try:
                pruned = await self.store.deliveries.prune(
                    delivered_before=time.time() - retention, retention=self._retention()
                )
                await self.store.erasures.prune(
                    before=time.time() - self.settings.relay_erasure_retention_seconds
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pruning delivered updates failed")
            else:
                if pruned:
                    log.info("pruned delivered updates", extra={"pruned": pruned})
            await asyncio.sleep(_PRUNE_EVERY)
