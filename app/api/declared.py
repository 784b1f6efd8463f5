"""The property schema at the door (`RELAY_PROPERTY_SCHEMA_FILE`, see `app/domain/schema.py`).

Every update of `POST /companies` and `POST /companies/bulk` is converted to the declared types
before it is stored (`"1000"` for a `number` is stored as 1000); a value that does not convert,
or an undeclared property when the schema refuses them, is a 422 naming the field and what was
expected, and nothing is stored. Webhook updates go through the same check in
`app/sources/common.py`, where what does not fit is dropped and counted instead.
"""

from __future__ import annotations

import functools

from app.config import Settings
from app.domain.models import Metadata
from app.domain.schema import PropertySchema, check, load_schema
from app.errors import FieldError, RelayError, field_path

Companies = list[tuple[str, Metadata]]
MAX_ERRORS = 1000  # named at most in one answer


@functools.lru_cache(maxsize=4)
def _load(path: str) -> PropertySchema:
    return load_schema(path)  # checked at start-up (Settings), so this does not fail


def schema_for(settings: Settings) -> PropertySchema | None:
    path = settings.relay_property_schema_file
    return None if path is None else _load(path)


def declared(companies: Companies, schema: PropertySchema | None, *, bulk: bool) -> Companies:
    """The companies with their metadata in the declared types, or a 422 naming every field
    that does not fit."""
    if schema is None:
        return companies
    out: Companies = []
    errors: list[FieldError] = []
    for index, (company_id, metadata) in enumerate(companies):
        checked = check(schema, metadata)
        for key, why in checked.problems:
            loc = ("companies", index, "metadata", key) if bulk else ("metadata", key)
            if len(errors) < MAX_ERRORS:
                errors.append(FieldError(field=field_path(loc), message=why))
        out.append((company_id, checked.metadata))
    if errors:
        shown = ", ".join(e.field for e in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise RelayError(422, "invalid_payload", f"invalid payload: {shown}{more}", errors=errors)
    return out
