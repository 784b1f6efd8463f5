"""Probes and the Prometheus scrape. Readiness is about the store, never about Userpilot."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import StoreDep
from app.api.schemas import Health
from app.metrics import (
    DEAD_LETTERS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    STORE_UP,
    WEBHOOK_PARKED,
)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The store is unreachable."}},
)
async def readyz(store: StoreDep) -> Response:
    """Readiness: the store answers a read and commits a write. Userpilot being down does not
    make the relay unready: updates are still stored and delivered later."""
    try:
        ok = await store.ping()
    except Exception:
        ok = False
    body = Health(status="ok" if ok else "unavailable", store="ok" if ok else "unreachable")
    return Response(
        body.model_dump_json(), status_code=200 if ok else 503, media_type="application/json"
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
)
async def metrics(store: StoreDep) -> Response:
    """Prometheus metrics, all prefixed `userpilot_relay_`; the queue gauges are read now."""
    try:
        up = await store.ping()  # a write: a store that reads but cannot write is down
        stats = await store.stats()
        parked = await store.count_parked()
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
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
