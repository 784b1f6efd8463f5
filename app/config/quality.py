"""Settings of the data-quality rules: the property schema, the PII guard, type drift.

A mixin of `app.config.Settings`: the fields are read from the same environment and `.env`.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings


class QualitySettings(BaseSettings):
    """What the relay lets through to Userpilot (README, "Data quality and privacy")."""

    relay_property_schema_file: str | None = None

    @field_validator("relay_property_schema_file")
    @classmethod
    def _schema_file(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from app.domain.schema import SchemaError, load_schema

        try:
            load_schema(value.strip())
        except SchemaError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()
