"""Settings: one `BaseSettings`, read from the environment and `.env`, refused early when unsafe.

`Settings` is what the service reads; it extends `StoreSettings`, the part a command that only
touches the store reads (`userpilot-relay migrate`), so both read the same sources (the
environment, then `.env` in the working directory) with the same validation. Its webhook and
backfill settings live in `app/config/sources.py`, its data-quality settings in
`app/config/quality.py`, each a mixin read the same way.

Every secret is a `SecretStr` so it never shows in a repr, a log line or an exception.
`load_settings` and `load_store_settings` turn pydantic's errors into one message per problem
that names the environment variable to set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.config.quality import QualitySettings
from app.config.sources import SourceSettings

REGION_URLS: dict[str, str] = {
    "us": "https://analytex.userpilot.io",
    "eu": "https://analytex-eu.userpilot.io",
}

Role = Literal["ingest", "admin"]
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(Exception):
    """The configuration cannot start a safe relay; the message says what to set."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One internal caller: its name (shown in logs and metrics), role and key digest."""

    name: str
    role: Role
    digest: bytes  # SHA-256 of the key; the plain key is never kept

    def __repr__(self) -> str:
        return f"ApiKey(name={self.name!r}, role={self.role!r})"


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """Parse `name:role:key` entries (key plain or `sha256:<hex>`), comma-separated."""
    keys: list[ApiKey] = []
    for position, entry in enumerate(part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, sep, rest = entry.partition(":")
        role, sep2, key = rest.partition(":")
        where = f"RELAY_API_KEYS entry {position + 1}"
        if not sep or not sep2 or not key:
            raise ValueError(f"{where} must look like name:role:key")
        if not _NAME.match(name):
            raise ValueError(f"{where}: the name must be 1-64 of A-Z a-z 0-9 _ . -")
        if role not in ("ingest", "admin"):
            raise ValueError(f"{where} ({name}): the role must be 'ingest' or 'admin'")
        hashed = _HASHED.match(key)
        if hashed:
            digest = bytes.fromhex(hashed.group(1))
        elif key.startswith("sha256:"):
            raise ValueError(f"{where} ({name}): sha256: must be followed by 64 hex digits")
        else:
            digest = hashlib.sha256(key.encode()).digest()
        if any(k.name == name for k in keys):
            raise ValueError(f"{where}: the name {name!r} is used twice")
        if any(k.digest == digest for k in keys):
            raise ValueError(f"{where} ({name}): the same key is given to two callers")
        keys.append(ApiKey(name=name, role=role, digest=digest))  # type: ignore[arg-type]
    if not keys:
        raise ValueError("RELAY_API_KEYS names no caller")
    return tuple(keys)


def _check_postgres_url(url: str) -> None:
    """Refuse a PostgreSQL URL libpq cannot read, in words that never repeat the URL.

    libpq's own message quotes the offending part, which may be the password.
    """
    from psycopg import conninfo

    try:
        conninfo.conninfo_to_dict(url.replace("postgresql+psycopg://", "postgresql://", 1))
    except Exception:
        raise ValueError(
            "is not a URL PostgreSQL can read (check its percent escapes: a % in the password "
            "must be written %25); the URL is not repeated here because it may hold a password"
        ) from None


class StoreSettings(BaseSettings):
    """Where the queue lives: all that `userpilot-relay migrate` needs (no Userpilot key, no
    relay keys). `Settings` extends it."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    relay_database_url: str = "sqlite:///relay.db"

    @field_validator("relay_database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("sqlite:///"):
            if value in ("sqlite:///", "sqlite:///:memory:"):
                raise ValueError("needs a file path (an in-memory database is not durable)")
            return value
        if value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            _check_postgres_url(value)
            return value
        raise ValueError("must be sqlite:///<path> or postgresql://user@host/db")


class Settings(SourceSettings, QualitySettings, StoreSettings):
    """Everything the relay reads from its environment."""

    userpilot_api_key: SecretStr
    userpilot_region: Literal["us", "eu"] = "us"
    userpilot_endpoint: str | None = None

    relay_api_keys: Annotated[tuple[ApiKey, ...], NoDecode]
    # relay_database_url: see StoreSettings
    relay_rate_limit_per_minute: int = Field(default=600, gt=0, le=100_000)
    # The longest pause taken from a 429's Retry-After (Userpilot's header may say an hour).
    relay_max_upstream_pause_seconds: float = Field(default=300.0, gt=0, le=3600)

    relay_max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    relay_max_bulk_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    relay_idempotency_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    # Request limits: a body must keep arriving (idle) and arrive whole in time, else 408;
    # request headers over the limit are a 431; bulk bodies are parsed a few at a time.
    relay_body_idle_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    relay_body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    relay_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    relay_bulk_concurrency: int = Field(default=1, ge=1, le=64)
    relay_bulk_queue_seconds: float = Field(default=30.0, gt=0, le=600)

    relay_delivery_concurrency: int = Field(default=16, ge=1, le=256)
    relay_merge_window_seconds: float = Field(default=0.05, ge=0, le=60)
    relay_max_merge: int = Field(default=500, ge=1, le=10_000)
    relay_retry_base_seconds: float = Field(default=1.0, gt=0)
    relay_retry_max_seconds: float = Field(default=300.0, gt=0)
    relay_upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    relay_lease_seconds: float = Field(default=60.0, gt=0)
    relay_shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    relay_delivered_retention_seconds: int = Field(default=7 * 24 * 3600, gt=0)

    # Erasure and retention (docs/erasure.md, docs/settings.md).
    relay_erase_on_source_delete: bool = False
    relay_erasure_request_interval_seconds: float = Field(default=2.0, ge=0, le=3600)
    relay_erasure_poll_seconds: float = Field(default=1.0, gt=0, le=300)
    relay_erasure_retention_seconds: int = Field(default=400 * 86_400, gt=0)
    relay_dead_letter_retention_seconds: int = Field(default=30 * 86_400, gt=0)
    relay_parked_event_retention_seconds: int = Field(default=30 * 86_400, gt=0)
    relay_job_retention_seconds: int = Field(default=30 * 86_400, gt=0)
    relay_values_retention_seconds: int = Field(default=180 * 86_400, gt=0)

    # Userpilot's asynchronous bulk jobs, beside the real-time calls (docs/operations.md).
    relay_upstream_bulk: Literal["auto", "off"] = "auto"
    relay_bulk_threshold: int | None = Field(default=None, ge=1, le=10_000_000)
    relay_bulk_max_rows: int = Field(default=10_000, ge=1, le=10_000)
    relay_bulk_min_rows: int = Field(default=100, ge=1, le=10_000)
    relay_bulk_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    relay_bulk_stuck_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    relay_bulk_fresh_seconds: float = Field(default=60.0, ge=0, le=86_400)

    # The operator console at /console (docs/console.md).
    relay_console: Literal["on", "off"] = "on"
    relay_console_session_secret: SecretStr | None = None
    relay_console_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)

    relay_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    relay_access_log: bool = True

    @field_validator("relay_api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return parse_api_keys(value)
        return value

    @field_validator("userpilot_region", "relay_upstream_bulk", "relay_console", mode="before")
    @classmethod
    def _lower_region(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("userpilot_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("relay_console_session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip()) < 32:
            raise ValueError("must be at least 32 characters (e.g. openssl rand -hex 32)")
        return value

    @field_validator("userpilot_endpoint", "relay_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be a full http(s) URL such as https://analytex.userpilot.io")
        if "@" in parts.netloc:
            raise ValueError(
                "must not carry credentials (user:password@): the relay authenticates itself"
            )
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.relay_lease_seconds < self.relay_upstream_timeout_seconds + 2:
            raise ValueError(
                "RELAY_LEASE_SECONDS must exceed RELAY_UPSTREAM_TIMEOUT_SECONDS by at least 2 s: "
                "a call must end before its lease lets another process deliver the same company"
            )
        if self.relay_bulk_min_rows > self.relay_bulk_max_rows:
            raise ValueError("RELAY_BULK_MIN_ROWS must not exceed RELAY_BULK_MAX_ROWS")
        if self.relay_retry_max_seconds < self.relay_retry_base_seconds:
            raise ValueError("RELAY_RETRY_MAX_SECONDS must be at least RELAY_RETRY_BASE_SECONDS")
        if self.hubspot_client_secret is not None and self.relay_public_url is None:
            raise ValueError(
                "HUBSPOT_CLIENT_SECRET needs RELAY_PUBLIC_URL: set it to the base URL HubSpot "
                "calls (e.g. https://relay.example.com), since HubSpot signs the full URL"
            )
        return self

    @property
    def bulk_threshold(self) -> int:
        """Companies waiting above which bulk jobs drain them: about a minute of real-time
        calls unless RELAY_BULK_THRESHOLD says otherwise."""
        return self.relay_bulk_threshold or self.relay_rate_limit_per_minute

    @property
    def upstream_base_url(self) -> str:
        """The Userpilot base URL: the explicit endpoint, else the region's host."""
        return self.userpilot_endpoint or REGION_URLS[self.userpilot_region]


_HINTS = {
    "userpilot_api_key": "set USERPILOT_API_KEY to the API key from Userpilot's Environment page",
    "relay_api_keys": (
        "set RELAY_API_KEYS to comma-separated name:role:key entries, role ingest or admin, "
        "key plain or sha256:<64 hex>, e.g. billing:ingest:sha256:<hex>"
    ),
}


S = TypeVar("S", bound=StoreSettings)


def load_settings() -> Settings:
    """The service's settings, or `ConfigError` with one actionable line per problem."""
    return _load(Settings)


def load_store_settings(database_url: str | None = None) -> StoreSettings:
    """Where the store is, read as `load_settings` reads it (`database_url` overrides
    RELAY_DATABASE_URL), or `ConfigError`. Needs neither the Userpilot key nor relay keys."""
    given = {} if database_url is None else {"relay_database_url": database_url}
    return _load(StoreSettings, **given)


def _load(model: type[S], **given: Any) -> S:
    try:
        return model(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            env = field.upper() or "configuration"
            if error["type"] == "missing":
                problems.append(f"{env} is not set: {_HINTS.get(field, f'set {env}')}")
            else:
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{env}: {message}")
        raise ConfigError("; ".join(problems)) from None
