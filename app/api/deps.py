"""The app state, typed dependencies on its resources, and caller auth.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per dependency per request for what is an attribute read.

Callers send `Authorization: Bearer <relay key>`. The key is hashed and compared against
every configured digest in constant time; a key of the wrong role is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, TypedDict

from fastapi import Depends, Request

from app.config import ApiKey, Role, Settings
from app.errors import RelayError
from app.sources.backfill import BackfillRunner
from app.sources.service import WebhookSources
from app.store.store import Store


class State(TypedDict):
    """What the lifespan (`app/main.py`) builds and yields, the one app state; every request
    sees it as `request.state`."""

    settings: Settings
    store: Store
    # Properties a HubSpot or Stripe mapping can write (`app.sources.mapping.sourced_properties`).
    sourced_properties: frozenset[str]
    webhooks: WebhookSources  # the enabled webhook sources
    backfills: BackfillRunner  # this replica's backfill runner


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_store(request: Request) -> Store:
    store: Store = request.state.store
    return store


async def get_webhooks(request: Request) -> WebhookSources:
    webhooks: WebhookSources = request.state.webhooks
    return webhooks


async def get_runner(request: Request) -> BackfillRunner:
    runner: BackfillRunner = request.state.backfills
    return runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
WebhooksDep = Annotated[WebhookSources, Depends(get_webhooks)]
RunnerDep = Annotated[BackfillRunner, Depends(get_runner)]

_CHALLENGE = 'Bearer realm="userpilot-relay"'


def find_key(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The configured key matching `presented`, comparing every digest in constant time."""
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def authenticate(request: Request, settings: Settings) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header:
        raise RelayError(
            401,
            "unauthorized",
            "missing relay key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    if scheme.lower() != "bearer" or not token:
        raise RelayError(
            401,
            "unauthorized",
            "the Authorization header must be: Bearer <key>",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_request"'},
        )
    key = find_key(settings.relay_api_keys, token)
    if key is None:
        raise RelayError(
            401,
            "unauthorized",
            "unknown relay key",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
        )
    request.state.caller = key.name
    return key


def require(*roles: Role) -> object:
    """A dependency admitting callers whose key has one of `roles`."""
    allowed = ", ".join(roles)

    async def dependency(request: Request, settings: SettingsDep) -> ApiKey:
        return admit(request, settings, roles, allowed)

    return Depends(dependency)


def admit(request: Request, settings: Settings, roles: tuple[Role, ...], allowed: str) -> ApiKey:
    """The caller's key when it has one of `roles`: else a 401 (no or unknown key) or 403."""
    key = authenticate(request, settings)
    if key.role not in roles:
        raise RelayError(403, "forbidden", f"this route needs a relay key with the role: {allowed}")
    return key


IngestCaller = Annotated[ApiKey, require("ingest")]
AdminCaller = Annotated[ApiKey, require("admin")]
AnyCaller = Annotated[ApiKey, require("ingest", "admin")]
