"""The simulator's app factory: a local stand-in for Userpilot's HTTP API.

`create_simulator_app(config)` returns a FastAPI app speaking Userpilot's company identify,
bulk identify and background job endpoints (token auth, validation, merge semantics, a
sliding-window rate limit, slow asynchronous bulk jobs), plus a `/_sim/` control API to inject
faults and inspect what arrived. All state lives on the app instance, so tests can run several.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.simulator import api, control
from app.simulator.config import SimulatorConfig
from app.simulator.errors import SimulatorError, error_body
from app.simulator.middleware import SimulatorMiddleware
from app.simulator.state import SimulatorState


async def _simulator_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SimulatorError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    return JSONResponse(
        error_body(exc.status_code, message, {"path": request.url.path}),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = jsonable_encoder(exc.errors())
    first = problems[0] if problems else {}
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = f"{location}: {first.get('msg', 'invalid')}" if location else "invalid request"
    return JSONResponse(error_body(400, message, {"problems": problems}), status_code=400)


def create_simulator_app(config: SimulatorConfig) -> FastAPI:
    """A fresh simulator with its own state; `config` is copied, then changed only via the API."""
    state = SimulatorState(dataclasses.replace(config))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        jobs = state.cancel_jobs()
        await asyncio.gather(*(job.task for job in jobs if job.task), return_exceptions=True)

    app = FastAPI(
        title="Userpilot simulator",
        summary="A local stand-in for Userpilot's company API, with fault injection.",
        lifespan=lifespan,
        docs_url="/_sim/docs",
        redoc_url=None,
        openapi_url="/_sim/openapi.json",
        redirect_slashes=False,  # Userpilot has no trailing-slash redirects: a wrong path is 404
    )
    app.state.simulator = state
    app.include_router(api.router)
    app.include_router(control.router)
    app.add_exception_handler(SimulatorError, _simulator_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(SimulatorMiddleware, state=state)
    return app
