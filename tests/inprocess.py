"""The real app in this process: `httpx.ASGITransport` over `create_app(settings)` with its
lifespan running (store, dispatcher, client), for route logic that needs no process of its own.

    async with InProcessRelay(database_url, endpoint=sim.url) as relay:
        r = await relay.post("/companies", json={...})
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.store.store import Store
from tests.relay import ADMIN_KEY, INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY, metric_value

T = TypeVar("T")


def await_chain(task: Any) -> str:
    """Where a task waits: every coroutine frame down its await chain."""
    chain, awaited = [], task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return " -> ".join(chain)


def run(coro: Coroutine[Any, Any, T], *, limit: float = 60.0) -> T:
    """Run one test's coroutine to the end on a fresh event loop (failing, not hanging)."""

    async def bounded() -> T:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait([task], timeout=limit)
        if not done:
            stacks = []
            for other in asyncio.all_tasks():
                stacks.append(f"{other.get_name()}: {await_chain(other)}")
            task.cancel()
            raise AssertionError("the test did not finish in time; tasks:\n" + "\n".join(stacks))
        return task.result()

    return asyncio.run(bounded())


def settings_for(
    database_url: str, *, endpoint: str = "http://127.0.0.1:9", **extra: Any
) -> Settings:
    """Settings given in full: never the developer's `.env` or environment."""
    values: dict[str, Any] = {
        "userpilot_api_key": UPSTREAM_KEY,
        "userpilot_endpoint": endpoint,
        "relay_api_keys": RELAY_KEYS,
        "relay_database_url": database_url,
        "relay_retry_base_seconds": 0.2,
        "relay_retry_max_seconds": 2,
        "relay_access_log": False,
    }
    values.update(extra)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class WithState:
    """Hands the lifespan's state to every request, as uvicorn does."""

    def __init__(self, app: FastAPI, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


class InProcessRelay:
    def __init__(self, database_url: str, *, endpoint: str = "http://127.0.0.1:9", **extra: Any):
        self.settings = settings_for(database_url, endpoint=endpoint, **extra)
        self.app = create_app(self.settings)
        self._stack = contextlib.AsyncExitStack()
        self.state: dict[str, Any] = {}
        self.client: httpx.AsyncClient

    async def __aenter__(self) -> InProcessRelay:
        state = await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
        self.state = dict(state or {})
        transport = httpx.ASGITransport(app=WithState(self.app, self.state))
        self.client = await self._stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://relay", timeout=30)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def store(self) -> Store:
        store: Store = self.state["store"]
        return store

    async def request(
        self, method: str, path: str, *, key: str | None = INGEST_KEY, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kwargs)

    async def post_company(
        self, company_id: str, metadata: dict[str, Any], **kwargs: Any
    ) -> httpx.Response:
        body = {"company_id": company_id, "metadata": metadata}
        return await self.post("/companies", json=body, **kwargs)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent). The registry is the process's: counters
        carry what earlier tests counted, so compare against a reading taken before."""
        return metric_value((await self.get("/metrics", key=None)).text, name, **labels)

    async def batch_done(self, batch_id: str, *, within: float = 30.0) -> dict[str, Any]:
        """The batch once every update in it is delivered or dead."""

        async def done() -> dict[str, Any] | None:
            body: dict[str, Any] = (await self.get(f"/batches/{batch_id}", key=ADMIN_KEY)).json()
            return body if body.get("done") else None

        result: dict[str, Any] = await eventually(done, within=within)
        return result

    async def wait_for(
        self, delivery_id: str, status: str, *, within: float = 15.0, key: str = ADMIN_KEY
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            body: dict[str, Any] = (await self.get(f"/deliveries/{delivery_id}", key=key)).json()
            if body.get("status") == status:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{delivery_id} is {body.get('status')}, not {status}")
            await asyncio.sleep(0.05)


async def eventually(
    check: Callable[[], Any], *, within: float = 15.0, interval: float = 0.05
) -> Any:
    """The first truthy answer of `check` (sync or async), polled without blocking the loop
    for longer than one call; fails after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {value!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def in_process(database_url: str, **kwargs: Any) -> AsyncIterator[InProcessRelay]:
    async with InProcessRelay(database_url, **kwargs) as relay:
        yield relay
