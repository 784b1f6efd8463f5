"""Source field -> Userpilot property mappings, and the type conversions Userpilot expects.

A mapping file is JSON, one per source: sections by object type (`company` for HubSpot;
`customer` and `subscription` for Stripe), each mapping a source field to
`{"property": <Userpilot property>, "type": "string" | "number" | "boolean" | "date"}`.
Keys starting with `_` are comments. Only mapped fields are forwarded: anything else, personal
data included, is dropped and counted. A value that does not convert to its type is reported,
never guessed. Dates become ISO 8601 in UTC (`2024-05-01T12:00:00Z`).

Conversions are total: whatever a signed source sends (5,000 digits, `1e999999`, digits of
other scripts), the answer is a value or a `ConversionError`, never another exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app.domain.models import Metadata, Primitive
from app.domain.rules import property_name_problem

FieldType = Literal["string", "number", "boolean", "date"]
EpochUnit = Literal["ms", "s"]

SECTIONS: dict[str, tuple[str, ...]] = {
    "hubspot": ("company",),
    "stripe": ("customer", "subscription"),
}
DEFAULTS_DIR = Path(__file__).resolve().parent / "mappings"
# ASCII digits only: `\d` alone would take other scripts' digits, which int() and float() accept.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"([+-]?)(\d+)", re.ASCII)
# 2**64 has 20 digits: a longer integer is out of range, and int() of over 4,300 digits raises.
_MAX_INTEGER_DIGITS = 20
_MAX_FLATTEN_DEPTH = 4


class MappingError(Exception):
    """A mapping file cannot be used; the message names the file and the problem."""


class ConversionError(ValueError):
    """A source value does not convert to the mapped type."""


class FieldRule(BaseModel):
    """Where one source field goes in Userpilot, and as what type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    property: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    type: FieldType = "string"


Section = dict[Annotated[str, StringConstraints(min_length=1, max_length=255)], FieldRule]


class _MappingFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    sections: dict[str, Section] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceMapping:
    """One source's loaded mapping: per section, source field -> rule."""

    source: str
    path: str
    sections: Mapping[str, Mapping[str, FieldRule]]

    def section(self, name: str) -> Mapping[str, FieldRule]:
        return self.sections.get(name, {})


def default_path(source: str) -> Path:
    return DEFAULTS_DIR / f"{source}.json"


def load_mapping(source: str, path: str | Path | None = None) -> SourceMapping:
    """Load and check one source's mapping file (the packaged default when `path` is None)."""
    where = Path(path) if path is not None else default_path(source)
    try:
        raw = where.read_bytes()
    except OSError as exc:
        raise MappingError(f"cannot read the mapping file {where}: {exc.strerror}") from None
    try:
        document = orjson.loads(raw)
    except ValueError as exc:
        raise MappingError(f"the mapping file {where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MappingError(f"the mapping file {where} must hold a JSON object")
    expected = SECTIONS[source]
    unknown = [k for k in document if not k.startswith("_") and k not in expected]
    if unknown:
        raise MappingError(
            f"the mapping file {where} has unknown sections {unknown}; "
            f"a {source} mapping has: {', '.join(expected)}"
        )
    sections = {k: v for k, v in document.items() if not k.startswith("_")}
    try:
        parsed = _MappingFile.model_validate({"sections": sections})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"][1:]) or "(top)"
        raise MappingError(f"the mapping file {where}: {loc}: {first['msg']}") from None
    for name, rules in parsed.sections.items():
        seen: dict[str, str] = {}
        for source_field, rule in rules.items():
            problem = property_name_problem(rule.property)
            if problem is not None:
                raise MappingError(f"the mapping file {where}: {name}: {source_field!r}: {problem}")
            if rule.property in seen:
                raise MappingError(
                    f"the mapping file {where}: {name}: {seen[rule.property]!r} and "
                    f"{source_field!r} both map to the property {rule.property!r}"
                )
            seen[rule.property] = source_field
    return SourceMapping(
        source=source,
        path=str(where),
        sections={name: dict(parsed.sections.get(name, {})) for name in expected},
    )


# conversions ----------------------------------------------------------------------------------
def iso_from_epoch(value: float, unit: EpochUnit) -> str:
    """Epoch seconds or milliseconds as ISO 8601 UTC, milliseconds shown only when present."""
    try:
        seconds = value / 1000 if unit == "ms" else value
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ConversionError("is out of the range of dates") from None
    return _iso(moment)


def _iso(moment: datetime) -> str:
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _integer(text: str) -> int | None:
    """`text` as an integer when it is one (ASCII digits, an optional sign), else None.

    Raises `ConversionError` for an integer beyond the 64-bit range, before `int()` is asked.
    """
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    if len(digits) > _MAX_INTEGER_DIGITS:
        raise ConversionError("is an integer out of the 64-bit range")
    return _in_range(int(sign + digits))


def _number(value: Primitive) -> int | float:
    if isinstance(value, bool) or value is None:
        raise ConversionError("is not a number")
    if isinstance(value, int):
        return _in_range(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConversionError("is not a finite number")
        return value
    text = value.strip()
    integer = _integer(text)
    if integer is not None:
        return integer
    if _NUMBER.fullmatch(text):
        try:
            number = float(text)
        except (ValueError, OverflowError):
            raise ConversionError("is not a number") from None
        if math.isfinite(number):
            return number
        raise ConversionError("is not a finite number")
    raise ConversionError("is not a number")


def _in_range(value: int) -> int:
    if not -(2**63) <= value <= 2**64 - 1:
        raise ConversionError("is an integer out of the 64-bit range")
    return value


def _date(value: Primitive, unit: EpochUnit) -> str:
    if isinstance(value, bool) or value is None:
        raise ConversionError("is not a date")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConversionError("is not a date")
        return iso_from_epoch(value, unit)
    text = value.strip()
    try:
        epoch = _integer(text)
    except ConversionError:
        raise ConversionError("is out of the range of dates") from None
    if epoch is not None:
        return iso_from_epoch(epoch, unit)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConversionError("is neither an epoch time nor an ISO 8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return _iso(moment)
    except (OverflowError, ValueError):
        raise ConversionError("is out of the range of dates") from None


def convert(value: Primitive, kind: FieldType, *, epoch: EpochUnit) -> Primitive:
    """`value` as Userpilot should get it for `kind`; None stays None (removes the property).

    Raises `ConversionError` when the value does not convert; nothing is guessed.
    """
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else str(value)
    if kind == "number":
        return _number(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ConversionError("is not a boolean (true or false)")
    return _date(value, epoch)


def flatten(obj: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Primitive]:
    """Primitive leaves of a JSON object as dotted paths (`address.country`); lists skipped."""
    out: dict[str, Primitive] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < _MAX_FLATTEN_DEPTH:
                out.update(flatten(value, f"{path}.", depth + 1))
        elif (
            value is None
            or isinstance(value, str | bool | int)
            or (isinstance(value, float) and math.isfinite(value))
        ):
            out[path] = value
    return out


@dataclass(slots=True)
class Mapped:
    """What a mapping made of one source record."""

    metadata: Metadata = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)  # source fields that did not convert
    unmapped: int = 0  # source fields with a value that no rule names


def apply(
    rules: Mapping[str, FieldRule], record: Mapping[str, Primitive], *, epoch: EpochUnit
) -> Mapped:
    """Map a flat source record; a None value is sent as null (it removes the property)."""
    mapped = Mapped()
    for source_field, value in record.items():
        rule = rules.get(source_field)
        if rule is None:
            if value is not None:
                mapped.unmapped += 1
            continue
        try:
            mapped.metadata[rule.property] = convert(value, rule.type, epoch=epoch)
        except ConversionError:
            mapped.invalid.append(source_field)
    return mapped
