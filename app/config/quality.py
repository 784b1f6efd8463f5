"""Settings of the data-quality rules: the property schema, the PII guard, type drift.

A mixin of `app.config.Settings`: the fields are read from the same environment and `.env`.
`quality_rules` builds the rules `app/domain/quality.py` applies, once per settings object.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator
from pydantic_settings import BaseSettings, NoDecode

from app.domain.quality import Rules
from app.domain.rules import printable, property_name_problem
from app.domain.schema import load_schema


class QualitySettings(BaseSettings):
    """What the relay lets through to Userpilot (docs/data-quality.md)."""

    relay_property_schema_file: str | None = None
    relay_pii_policy: Literal["reject", "strip", "allow"] = "reject"
    relay_pii_allowed_properties: Annotated[frozenset[str], NoDecode] = frozenset()
    relay_type_drift: Literal["warn", "reject"] = "warn"
    relay_catalogue_names_per_caller: int = Field(default=2_000, ge=1, le=10_000)
    _rules: Rules | None = PrivateAttr(default=None)

    @field_validator("relay_property_schema_file")
    @classmethod
    def _schema_file(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from app.domain.schema import SchemaError

        try:
            load_schema(value.strip())
        except SchemaError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("relay_pii_policy", "relay_type_drift", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("relay_pii_allowed_properties", mode="before")
    @classmethod
    def _allowed(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        names = [part.strip() for part in value.split(",") if part.strip()]
        for name in names:
            problem = property_name_problem(name)
            if problem:
                raise ValueError(f"{printable(name, 64)!r} is not a property name: {problem}")
        return frozenset(names)

    def quality_rules(self) -> Rules:
        """The schema, the PII guard and the drift policy, as `review` applies them."""
        cached = self._rules
        if cached is None:
            path = self.relay_property_schema_file
            cached = Rules(
                schema=None if path is None else load_schema(path),
                pii=self.relay_pii_policy,
                pii_allowed=self.relay_pii_allowed_properties,
                drift=self.relay_type_drift,
            )
            self._rules = cached
        return cached
