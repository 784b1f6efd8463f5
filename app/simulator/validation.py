"""Parsing and validation of Userpilot payloads, and the metadata merge rule.

Pure functions, no I/O: the simulator must reject exactly what Userpilot rejects (non-JSON,
a missing or empty `company_id`, nested metadata values) so the relay's own validation can be
tested end to end, and must merge exactly as Userpilot does (absent keys kept, `null` removes).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from app.simulator.errors import SimulatorError

Primitive = str | int | float | bool | None
Metadata = dict[str, Primitive]

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r';\s*([a-zA-Z_*-]+)="?([^";]*)"?')
# The request log keeps the first few ids of a bulk upload, and bodies it cannot summarise
# only up to this size.
_SAMPLE_SIZE = 5
_SMALL_BODY = 64 * 1024


@dataclass(frozen=True)
class CompanyRecord:
    """One validated company update."""

    company_id: str
    metadata: Metadata


@dataclass(frozen=True)
class UserRecord:
    """One validated user update (users bulk jobs only hold the slot: nothing is stored)."""

    user_id: str
    metadata: Metadata


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body."""

    filename: str | None
    content: bytes


def invalid(message: str, **details: object) -> SimulatorError:
    """A 400 naming the problem."""
    return SimulatorError(400, message, dict(details))


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> object:
    """Decode a JSON body; NaN and infinities are refused like any strict JSON parser does."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None


def try_parse_json(raw: bytes) -> object:
    """The decoded body, or None when it is empty or not JSON (for the request log)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _is_primitive(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _parse_record(
    value: object, *, id_field: str, collection: str, index: int | None
) -> tuple[str, Metadata]:
    """Validate one `{<id_field>, "metadata"}` object; `index` locates it in a bulk upload."""
    where: dict[str, object] = {} if index is None else {"index": index}
    prefix = "" if index is None else f"{collection}[{index}]: "
    if not isinstance(value, dict):
        raise invalid(f"{prefix}expected a JSON object with {id_field} and metadata", **where)
    record_id = value.get(id_field)
    if not isinstance(record_id, str) or not record_id:
        raise invalid(
            f"{prefix}{id_field} is required and must be a non-empty string",
            field=id_field,
            **where,
        )
    metadata = value.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise invalid(f"{prefix}metadata must be an object", field="metadata", **where)
    for key, item in metadata.items():
        if not _is_primitive(item):
            raise invalid(
                f"{prefix}metadata.{key} must be a string, number, boolean or null",
                field=f"metadata.{key}",
                **where,
            )
    return record_id, dict(metadata)


def parse_company(value: object, *, index: int | None = None) -> CompanyRecord:
    """Validate one `{"company_id", "metadata"}` object; `index` locates it in a bulk upload."""
    company_id, metadata = _parse_record(
        value, id_field="company_id", collection="companies", index=index
    )
    return CompanyRecord(company_id=company_id, metadata=metadata)


def parse_user(value: object, *, index: int | None = None) -> UserRecord:
    """Validate one `{"user_id", "metadata"}` object of a users bulk upload."""
    user_id, metadata = _parse_record(value, id_field="user_id", collection="users", index=index)
    return UserRecord(user_id=user_id, metadata=metadata)


def parse_company_ids(value: object) -> list[str]:
    """Validate a delete body `{"companies": ["id", ...]}`: a non-empty list of non-empty ids."""
    if not isinstance(value, dict):
        raise invalid('body must be {"companies": ["company id", ...]}')
    ids = value.get("companies")
    if not isinstance(ids, list) or not ids:
        raise invalid("companies must be a non-empty list of company ids", field="companies")
    for index, company_id in enumerate(ids):
        if not isinstance(company_id, str) or not company_id:
            raise invalid(
                f"companies[{index}] must be a non-empty string", field="companies", index=index
            )
    return list(ids)


def refused(company_id: str) -> SimulatorError:
    """Userpilot's answer to a company it will not take (see `invalid_company_ids`)."""
    return SimulatorError(
        400,
        f"company {company_id} was refused",
        error="invalid_input",
        error_code="INVALID_COMPANY",
    )


def parse_ndjson(data: bytes) -> list[object]:
    """One JSON value per non-blank line."""
    rows: list[object] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, parse_constant=_reject_constant))
        except (ValueError, UnicodeDecodeError):
            raise invalid(f"line {number} of the file is not valid JSON", line=number) from None
    return rows


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormPart]:
    """The parts of a multipart/form-data body by field name (a deliberately small parser)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise invalid("multipart body without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts: dict[str, FormPart] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise invalid("malformed multipart body")
        name: str | None = None
        filename: str | None = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            header, _, value = line.partition(":")
            if header.strip().lower() != "content-disposition":
                continue
            params = dict(_DISPOSITION_PARAM.findall(value))
            name = params.get("name")
            filename = params.get("filename")
        if name is not None:
            parts[name] = FormPart(filename=filename, content=content.removesuffix(b"\r\n"))
    return parts


def merge_metadata(stored: Metadata, update: Metadata) -> None:
    """Userpilot's merge: sent keys overwrite, `null` removes, keys not sent are kept."""
    for key, value in update.items():
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value


def summarize_bulk(raw: bytes, content_type: str, *, collection: str, id_field: str) -> object:
    """What the request log keeps of a bulk upload: its format, row count and first few ids.

    `{"format": "json" | "ndjson", "rows": N, "company_ids_sample": [...]}` (`user_ids_sample`
    for users), so a log of 10,000-row uploads stays small. A body of another shape is kept
    as parsed JSON when small, else as None.
    """
    sample: list[object]
    if content_type.lower().startswith("multipart/form-data"):
        try:
            part = parse_multipart(raw, content_type).get("file")
        except SimulatorError:
            return None
        if part is None:
            return None
        lines = [line for line in part.content.splitlines() if line.strip()]
        rows, sample, kind = len(lines), [try_parse_json(x) for x in lines[:_SAMPLE_SIZE]], "ndjson"
    else:
        parsed = try_parse_json(raw)
        items = parsed.get(collection) if isinstance(parsed, dict) else None
        if not isinstance(items, list):
            return parsed if len(raw) <= _SMALL_BODY else None
        rows, sample, kind = len(items), items[:_SAMPLE_SIZE], "json"
    ids = [row.get(id_field) for row in sample if isinstance(row, dict)]
    return {"format": kind, "rows": rows, f"{id_field}s_sample": ids}
