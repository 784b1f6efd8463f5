"""Requests that cost the relay: bulk bodies parsed a few at a time, bodies that stall or
trickle (408), megabyte headers (431), odd Content-Length values. In process over the real
app, with a real store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.inprocess import InProcessRelay, run


def test_bulk_bodies_are_parsed_a_few_at_a_time(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(
            database_url, relay_bulk_concurrency=1, relay_bulk_queue_seconds=0.2
        ) as relay:
            body = {"companies": [{"company_id": "q"}]}
            assert (await relay.post("/companies/bulk", json=body)).status_code == 202
            admission = relay.app.state.bulk_admission
            # Another caller's bulk is being parsed: the turn is taken, this one waits, then
            # gives up with a 503 and stores nothing.
            async with admission.turn():
                busy = await relay.post("/companies/bulk", json=body)
            assert busy.status_code == 503
            assert busy.json()["error"] == "busy"
            assert busy.headers["retry-after"] == "5"
            # Bodies held in memory are bounded too: past them, a 503 before reading the body.
            async with contextlib.AsyncExitStack() as held:
                for _ in range(3):  # one parsing + two waiting, with a concurrency of 1
                    await held.enter_async_context(admission.holding())
                started = time.monotonic()
                full = await relay.post("/companies/bulk", json=body)
                assert full.status_code == 503 and full.json()["error"] == "busy"
                assert time.monotonic() - started < 0.2  # refused at once, not after waiting
            assert (await relay.post("/companies/bulk", json=body)).status_code == 202
            assert (await relay.store.deliveries.stats()).queued == 2

    run(main())


async def _trickle(first: bytes, pause: float) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(pause)
    yield b"}"


def test_a_stalled_body_is_408_and_stores_nothing(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(
            f"sqlite:///{tmp_path / 'r.db'}", relay_body_idle_timeout_seconds=0.3
        ) as relay:
            r = await relay.post(
                "/companies",
                content=_trickle(b'{"company_id": "slow"', 2.0),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 408, r.text
            assert r.json()["error"] == "request_timeout"
            assert (await relay.store.deliveries.stats()).queued == 0

    run(main())


def test_a_trickled_body_is_408_after_the_total_timeout(tmp_path: Any) -> None:
    async def drip() -> AsyncIterator[bytes]:
        for part in (b'{"company_id":', b' "drip"', b', "metadata": {}', b"}"):
            yield part
            await asyncio.sleep(0.2)  # never idle for long, but slow overall

    async def main() -> None:
        async with InProcessRelay(
            f"sqlite:///{tmp_path / 'r.db'}",
            relay_body_idle_timeout_seconds=5,
            relay_body_timeout_seconds=0.5,
        ) as relay:
            r = await relay.post(
                "/companies", content=drip(), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 408, r.text

    run(main())


def test_megabyte_headers_are_refused_cheaply(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}") as relay:
            huge = "t=1," + ",".join(["v1=00"] * 200_000)
            r = await relay.post(
                "/companies", json={"company_id": "h"}, headers={"X-Padding": huge}
            )
            assert r.status_code == 431
            assert r.json()["error"] == "request_header_fields_too_large"
            assert (await relay.store.deliveries.stats()).queued == 0
            # The probes are refused the same way, and still answer normal requests.
            assert (await relay.get("/healthz", key=None)).status_code == 200

    run(main())


def test_unicode_digits_in_content_length_are_not_a_500(tmp_path: Any) -> None:
    async def main() -> None:
        async with InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}") as relay:
            body = b'{"company_id": "cl"}'
            r = await relay.post(
                "/companies",
                content=body,
                # Byte 0xB2 reads as '²' (latin-1): str.isdigit() says yes, int() says no.
                headers={"Content-Type": "application/json", "Content-Length": b"\xb2"},
            )
            assert r.status_code in (202, 400, 422), r.text

    run(main())
