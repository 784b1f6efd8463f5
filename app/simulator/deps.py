"""Route dependencies: the simulator state, Userpilot's token auth and its rate limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.simulator.errors import SimulatorError
from app.simulator.state import SimulatorState

# async: FastAPI would run plain functions in worker threads, racing on the shared state.


async def get_state(request: Request) -> SimulatorState:
    state = request.app.state.simulator
    assert isinstance(state, SimulatorState)
    return state


StateDep = Annotated[SimulatorState, Depends(get_state)]


async def require_api_key(request: Request, state: StateDep) -> str:
    """The caller's API key, from `Authorization: Token <key>`; 401 unless it is configured."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "token" or not token:
        raise SimulatorError(401, "missing API key: send 'Authorization: Token <API key>'")
    if token not in state.config.api_keys:
        raise SimulatorError(401, "invalid API key")
    return token


ApiKeyDep = Annotated[str, Depends(require_api_key)]


async def rate_limited_api_key(api_key: ApiKeyDep, state: StateDep) -> str:
    """The caller's API key once the request fits in the key's sliding one-minute window."""
    if not state.admit(api_key):
        limit = state.config.rate_limit_per_minute
        raise SimulatorError(429, f"rate limit exceeded: at most {limit} requests per minute")
    return api_key


RateLimitedApiKeyDep = Annotated[str, Depends(rate_limited_api_key)]
