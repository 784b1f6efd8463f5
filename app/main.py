"""The ASGI app: `uvicorn app.main:app`.

`app` is the service (`service_app`): the settings are read once, when uvicorn imports it, and
logging is configured once, from them, before uvicorn's first line. `create_app` builds the
routes (the same whatever the settings, so the OpenAPI document is stable, and complete: see
`RelayApp.openapi`); its lifespan refuses to start without a Userpilot key or a relay key, and
builds the shared resources: the store, the one Userpilot client, the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from app import __version__
from app.api import (
    backfills,
    companies,
    deliveries,
    erasures,
    health,
    jobs,
    properties,
    status,
    webhooks,
)
from app.api.deps import State
from app.api.middleware import RequestMetricsMiddleware
from app.api.schemas import BulkIn, CompanyIn
from app.chores import count_refused_names, flush_catalogue
from app.config import ConfigError, Settings, load_settings
from app.console import router as console_router
from app.delivery.dispatcher import Dispatcher
from app.domain.errors import StoreUnavailable
from app.errors import install_error_handlers
from app.lifecycle import cancel_and_wait
from app.logs import configure_logging, write_directly
from app.sources.backfill import BackfillRunner
from app.sources.mapping import MappingError, sourced_properties
from app.sources.service import WebhookSources
from app.store.store import Store, open_store
from app.userpilot.client import UserpilotClient

log = logging.getLogger("userpilot_relay")

DESCRIPTION = """\
The one place your systems talk to Userpilot through. Internal services send company
updates with their relay key (`Authorization: Bearer <key>`); HubSpot and Stripe webhooks
arrive signed. Every accepted update is stored durably before it is acknowledged, then
delivered to Userpilot merged per company, paced under the rate limit, retried through
outages, and dead-lettered (visible, replayable) only when Userpilot rejects it.

Errors are JSON: `{"error": code, "message": text, "errors": [{"field", "message"}]}`.
"""


# The request bodies that routes read and validate themselves (app/api/companies.py declares
# them by `$ref` in `openapi_extra`): FastAPI never sees them as parameters, so their schemas
# are added to the document here. Without them the document references schemas it never
# defines, and client generators drop POST /companies and POST /companies/bulk.
REQUEST_BODY_MODELS: tuple[type[BaseModel], ...] = (CompanyIn, BulkIn)
SCHEMA_REF = "#/components/schemas/{model}"


def request_body_schemas(models: tuple[type[BaseModel], ...]) -> dict[str, dict[str, Any]]:
    """Each model's JSON schema under its class name, with its `$defs` hoisted beside it."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=SCHEMA_REF)
        nested: dict[str, dict[str, Any]] = schema.pop("$defs", {})
        for name, definition in [*nested.items(), (model.__name__, schema)]:
            if schemas.setdefault(name, definition) != definition:
                raise RuntimeError(f"two different OpenAPI schemas are named {name}")
    return schemas


def add_schemas(document: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`document` with `extra` in components/schemas, all sorted by name (a stable document)."""
    components: dict[str, Any] = document.setdefault("components", {})
    schemas: dict[str, Any] = dict(components.get("schemas", {}))
    for name, schema in extra.items():
        if schemas.setdefault(name, schema) != schema:
            raise RuntimeError(f"two different OpenAPI schemas are named {name}")
    components["schemas"] = dict(sorted(schemas.items()))
    return document


# FastAPI 0.16x asks OpenTelemetry on every request whether it is configured; the relay exports
# Prometheus metrics and configures none (the cost: docs/development.md, Benchmarks).
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


class StartupError(Exception):
    """The relay must not start; the message says what to fix."""


class RelayApp(FastAPI):
    """FastAPI whose failed start-up reports one actionable line instead of a traceback."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return

        async def send_clean(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                reason = getattr(self.state, "startup_error", None)
                if reason:
                    message = {**message, "message": reason}
            await send(message)

        await super().__call__(scope, receive, send_clean)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document plus the schemas of the bodies routes read themselves (cached)."""
        if self.openapi_schema is None:
            document = super().openapi()
            self.openapi_schema = None  # not cached until complete
            self.openapi_schema = add_schemas(document, request_body_schemas(REQUEST_BODY_MODELS))
        return self.openapi_schema


def _settings_or_fail(app: FastAPI, settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    try:
        return load_settings()
    except ConfigError as exc:
        app.state.startup_error = f"userpilot-relay cannot start: {exc}"
        raise StartupError(app.state.startup_error) from None


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    logging_configured: bool = False,
) -> FastAPI:
    """The relay app; settings are read from the environment at start-up when not given.

    Its start-up configures logging from the settings (once), unless `logging_configured`:
    the process's entry point (`service_app`) did it already, before the app was made.
    `store` replaces the one `RELAY_DATABASE_URL` names (the benchmark's no-storage floor).
    """

    given_store = store

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        active = _settings_or_fail(app, settings)
        if not logging_configured:
            configure_logging(active.relay_log_level)
        try:
            sources = WebhookSources(active)
            # HubSpot or Stripe, by webhook or backfill: the properties they can write.
            sourced = sourced_properties(
                {
                    source: path
                    for source, secret, path in (
                        (
                            "hubspot",
                            active.hubspot_client_secret or active.hubspot_access_token,
                            active.hubspot_mapping_file,
                        ),
                        (
                            "stripe",
                            active.stripe_webhook_secret or active.stripe_api_key,
                            active.stripe_mapping_file,
                        ),
                    )
                    if secret is not None
                }
            )
        except MappingError as exc:
            app.state.startup_error = f"userpilot-relay cannot start: {exc}"
            raise StartupError(app.state.startup_error) from None
        store = given_store or open_store(active.relay_database_url)
        store.catalogue.limit_callers(
            active.relay_catalogue_names_per_caller, on_refused=count_refused_names
        )
        try:
            await store.open()
        except StoreUnavailable as exc:
            app.state.startup_error = f"userpilot-relay cannot start: {exc}"
            raise StartupError(app.state.startup_error) from None
        client = UserpilotClient(
            base_url=active.upstream_base_url,
            api_key=active.userpilot_api_key.get_secret_value(),
            timeout=active.relay_upstream_timeout_seconds,
        )
        dispatcher = Dispatcher(store=store, client=client, settings=active)
        dispatcher.start()
        sources.start(store=store)
        # Resumes a backfill a previous process (or a dead replica) left, and reconciles.
        runner = BackfillRunner(settings=active, store=store)
        runner.start_loop()
        catalogue = asyncio.create_task(flush_catalogue(store))
        log.info(
            "relay started",
            extra={
                "version": __version__,
                "upstream": active.upstream_base_url,
                "store": active.relay_database_url.split("://", 1)[0],
                "callers": [k.name for k in active.relay_api_keys],
                "rate_limit_per_minute": active.relay_rate_limit_per_minute,
            },
        )
        try:
            yield State(
                settings=active,
                store=store,
                sourced_properties=sourced,
                webhooks=sources,
                backfills=runner,
            )
        finally:
            try:
                await runner.stop()
                await sources.stop()
                await cancel_and_wait([catalogue])
                with contextlib.suppress(Exception):  # the last counts, while the store is open
                    await store.catalogue.flush()
                await dispatcher.stop()
                await client.aclose()
                await store.close()
                log.info("relay stopped")
            finally:
                write_directly()  # every line out before the process may be ended

    app = RelayApp(
        title="userpilot-relay",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # `/companies/` is a 404, never a redirect: Starlette's would name http://<Host>/...
        # (plain http behind TLS, a Host the caller chose), and a POST redirect is lost on most
        # clients. docs/api.md says so.
        redirect_slashes=False,
        **_NO_TELEMETRY,
    )
    install_error_handlers(app)
    for router in (
        companies.router,
        deliveries.router,
        webhooks.router,
        health.router,
        status.router,
        jobs.router,
        backfills.router,
        properties.router,
        erasures.router,
        console_router,  # HTML, not in the API document (its router says so)
    ):
        mount(app, router)
    app.add_middleware(RequestMetricsMiddleware)
    return app


def mount(app: FastAPI, router: APIRouter) -> None:
    """Put the router's routes in the app's own route list. FastAPI 0.16x's `include_router`
    wraps a router in a layer that matches each request twice (a tenth of `POST /companies`'s
    time: docs/development.md); our routers carry no prefix, dependency or tag of the include,
    so their routes are the app's as they stand. The route objects are the routers' own, shared
    by every app built in the process, so `app.dependency_overrides` does not reach them:
    tests run the real app over a real store instead."""
    app.router.routes.extend(router.routes)


def service_app(*, store: Store | None = None) -> FastAPI:
    """The app a relay process serves: `app` below, for `uvicorn app.main:app`.

    The entry point owns the process's settings and logging: the settings are read here (the
    environment, then `.env`), once, and logging is configured from them (RELAY_LOG_LEVEL),
    once, before uvicorn prints its first line, so every line the process prints is JSON.
    Settings that cannot start a relay leave logging at INFO; the app's start-up then refuses,
    in one line that says what to set, exactly as `create_app()` does.
    """
    tune_gc()
    try:
        settings: Settings | None = load_settings()
    except ConfigError:
        settings = None  # read again, and refused, by the start-up
    configure_logging(settings.relay_log_level if settings else "INFO")
    return create_app(settings, store=store, logging_configured=True)


def tune_gc() -> None:
    """Collect cyclic garbage rarely, and never walk what was imported.

    Requests free their objects by reference counting; what the cyclic collector adds is
    pauses, which set the tail latency with Python's default thresholds (docs/development.md).
    The young generation is now collected every 50,000 allocations net (the middle one every
    50 of those, the oldest every 100 of the middle one's), and everything alive at start-up
    is moved out of the collector's sight.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


app: FastAPI  # made on its first read: see __getattr__


def __getattr__(name: str) -> FastAPI:
    """`app`, made when first read (`uvicorn app.main:app` reads it), not when this module is
    imported: tests and `userpilot-relay openapi` import `create_app` from here without
    reading any settings or touching the process's logging."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        made = globals()["app"] = service_app()
    except AttributeError as exc:  # uvicorn would report it as "no attribute app"
        raise RuntimeError(f"building the relay app failed: {exc!r}") from exc
    return made
