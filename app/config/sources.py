"""Settings of the webhook sources and the backfills from HubSpot and Stripe (see `Settings`).

A mixin of `app.config.Settings`: the fields are read from the same environment and `.env`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings


class SourceSettings(BaseSettings):
    """HubSpot and Stripe: webhook secrets, mappings and their APIs."""

    relay_public_url: str | None = None
    hubspot_client_secret: SecretStr | None = None
    # v1/v2 signatures carry no timestamp: a captured request can be replayed at any time.
    hubspot_accept_legacy_signatures: bool = False
    hubspot_company_id_prefix: str = Field(default="", max_length=64)
    hubspot_mapping_file: str | None = None
    # One secret, or several separated by commas while a secret is being rolled.
    stripe_webhook_secret: SecretStr | None = None
    stripe_webhook_tolerance_seconds: int = Field(default=300, gt=0, le=86_400)
    stripe_company_id_metadata_key: str = Field(default="company_id", min_length=1, max_length=40)
    stripe_missing_company: Literal["customer_id", "skip"] = "customer_id"
    stripe_mapping_file: str | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    stripe_unresolved_retry_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # Backfills (docs/backfills.md): the providers' list APIs, paced well under their limits.
    hubspot_access_token: SecretStr | None = None
    hubspot_api_base: str = "https://api.hubapi.com"
    hubspot_requests_per_second: float = Field(default=5.0, gt=0, le=100)
    stripe_requests_per_second: float = Field(default=20.0, gt=0, le=100)
    # Off by default; else a reconciliation of every configured source this often (seconds
    # from the start of the last backfill of that source).
    relay_reconcile_interval_seconds: float | None = Field(default=None, ge=1, le=30 * 86_400)
    # A backfill reading more pages than this fails (a provider whose paging never ends).
    relay_backfill_max_pages: int = Field(default=100_000, ge=1, le=10_000_000)

    @field_validator(
        "hubspot_client_secret",
        "stripe_webhook_secret",
        "stripe_api_key",
        "hubspot_access_token",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("stripe_api_key", "hubspot_access_token")
    @classmethod
    def _api_token(cls, value: SecretStr | None) -> SecretStr | None:
        """A token as an `Authorization` header can carry it (never repeated in the error)."""
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not (token.isascii() and token.isprintable()) or " " in token:
            raise ValueError(
                "must be the token as the provider shows it: printable ASCII without spaces "
                "(check for a stray newline or quote); the value is not repeated here"
            )
        return SecretStr(token)

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _stripe_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = [p.strip() for p in value.get_secret_value().split(",")]
        if any(not p for p in parts):
            raise ValueError(
                "an empty secret between commas: give whsec_... secrets, comma-separated"
            )
        return SecretStr(",".join(parts))

    @field_validator("stripe_api_base", "hubspot_api_base")
    @classmethod
    def _api_base(cls, value: str, info: ValidationInfo) -> str:
        hubspot = info.field_name == "hubspot_api_base"
        example = "https://api.hubapi.com" if hubspot else "https://api.stripe.com"
        secret = "HUBSPOT_ACCESS_TOKEN" if hubspot else "STRIPE_API_KEY"
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be a full http(s) URL such as {example}")
        if "@" in parts.netloc:
            raise ValueError(f"must not carry credentials (user:password@): set {secret}")
        return value

    @field_validator("relay_reconcile_interval_seconds", mode="before")
    @classmethod
    def _blank_is_off(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

    @field_validator("hubspot_company_id_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain control characters (it starts every company id)")
        return value

    @field_validator("stripe_company_id_metadata_key")
    @classmethod
    def _metadata_key(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must name a key of the Stripe customer's metadata")
        return value

    @field_validator("hubspot_mapping_file", "stripe_mapping_file")
    @classmethod
    def _mapping_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        from app.sources.mapping import MappingError, load_mapping

        source = "hubspot" if info.field_name == "hubspot_mapping_file" else "stripe"
        try:
            load_mapping(source, value.strip())
        except MappingError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @property
    def stripe_webhook_secrets(self) -> tuple[SecretStr, ...]:
        """Every Stripe endpoint secret accepted now (several while one is being rolled)."""
        if self.stripe_webhook_secret is None:
            return ()
        return tuple(SecretStr(s) for s in self.stripe_webhook_secret.get_secret_value().split(","))
