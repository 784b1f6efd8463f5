"""Probes and the Prometheus scrape. Readiness is about the store, never about Userpilot."""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import StoreDep
from app.api.schemas import Health
from app.metrics import (
    DEAD_LETTERS,
    PROPERTY_CONFLICTS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    STORE_UP,
    WEBHOOK_PARKED,
)
from app.store.store import Store

router = APIRouter(tags=["operations"])

_PROBE_TTL = 1.0  # seconds a probe's answer is reused: a flood of probes costs one write
_PROBE_TIMEOUT = 3.0


class _Probe:
    """One store probe at a time, its answer shared for a second."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.checked_at = -_PROBE_TTL
        self.ok = False


async def _probe(request: Request, store: Store) -> bool:
    probe: _Probe | None = getattr(request.app.state, "store_probe", None)
    if probe is None:
        probe = request.app.state.store_probe = _Probe()
    async with probe.lock:
        if time.monotonic() - probe.checked_at < _PROBE_TTL:
            return probe.ok
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                probe.ok = await store.ping()
        except Exception:
            probe.ok = False
        probe.checked_at = time.monotonic()
        return probe.ok


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The store is unreachable."}},
)
async def readyz(request: Request, store: StoreDep) -> Response:
    """Readiness: the store answers a read and commits a write. Userpilot being down does not
    make the relay unready: updates are still stored and delivered later."""
    ok = await _probe(request, store)
    body = Health(status="ok" if ok else "unavailable", store="ok" if ok else "unreachable")
    return Response(
        body.model_dump_json(), status_code=200 if ok else 503, media_type="application/json"
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
)
async def metrics(request: Request, store: StoreDep) -> Response:
    """Prometheus metrics, all prefixed `userpilot_relay_`; the queue gauges are read now."""
    up = await _probe(request, store)  # a write: a store that reads but cannot write is down
    try:
        stats = await store.deliveries.stats()
        parked = await store.webhooks.count_parked()
    except Exception:
        STORE_UP.set(0)
    else:
        STORE_UP.set(1 if up else 0)
        QUEUE_DEPTH.labels(status="queued").set(stats.queued)
        QUEUE_DEPTH.labels(status="delivering").set(stats.delivering)
        DEAD_LETTERS.set(stats.dead)
        oldest = stats.oldest_queued_at
        QUEUE_OLDEST_AGE.set(max(0.0, time.time() - oldest) if oldest else 0.0)
        WEBHOOK_PARKED.set(parked)
    # The catalogue's counts, apart: a failed flush keeps them and never hides the queue.
    with contextlib.suppress(Exception):
        PROPERTY_CONFLICTS.set(await store.catalogue.flush())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
