"""The property schema file (groundwork for issue 12): parsed once, refused in one line, and
applied to an update's metadata with lossless conversions."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.domain.schema import PropertySchema, SchemaError, check, load_schema, parse_schema

SCHEMA = b"""{"properties": {"monthly_spend": {"type": "number"},
  "renewal_date": {"type": "date"}, "plan": {"type": "string"},
  "active": {"type": "boolean"},
  "billing_email": {"type": "string", "pii": "allowed"}},
  "unknown_properties": "allow"}"""


def test_a_schema_file_is_read_with_its_rules(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(SCHEMA)
    schema = load_schema(path)
    assert schema.properties["monthly_spend"].type == "number"
    assert schema.properties["billing_email"].pii_allowed
    assert not schema.properties["plan"].pii_allowed
    assert schema.unknown_properties == "allow"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"properties": [], "x": 1}', "unknown key 'x'"),
        (b'{"properties": []}', '"properties" must be an object'),
        (b'{"unknown_properties": "maybe"}', '"unknown_properties" must be'),
        (b'{"properties": {"a": {"type": "money"}}}', '"type" must be one of'),
        (b'{"properties": {"a": {"type": "date", "pii": "yes"}}}', '"pii" can only be'),
        (b'{"properties": {"a": "number"}}', "must be an object like"),
        (b'{"properties": {"a\\u0000b": {"type": "number"}}}', "control characters"),
        (b'{"properties": {"a": {"type": "number", "min": 1}}}', "unknown key 'min'"),
    ],
)
def test_a_malformed_schema_is_refused_in_one_line(raw: bytes, says: str) -> None:
    with pytest.raises(SchemaError) as refused:
        parse_schema(raw, where="schema.json")
    message = str(refused.value)
    assert says in message and message.startswith("schema.json")
    assert "\n" not in message and "\x00" not in message


def test_a_missing_file_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(tmp_path / "absent.json")


def test_declared_properties_are_converted_and_mismatches_named_without_the_value() -> None:
    schema = parse_schema(SCHEMA)
    checked = check(
        schema,
        {
            "monthly_spend": "1000",
            "renewal_date": "2026-12-01T10:00:00+02:00",
            "active": "true",
            "plan": "pro",
            "seats": 12,  # not declared: allowed as it is
            "gone": None,
        },
    )
    assert checked.problems == []
    assert checked.metadata == {
        "monthly_spend": 1000,
        "renewal_date": "2026-12-01T08:00:00Z",
        "active": True,
        "plan": "pro",
        "seats": 12,
        "gone": None,
    }
    bad = check(
        schema, {"monthly_spend": "a lot", "renewal_date": "next tuesday", "plan": 7, "x": 1}
    )
    assert [key for key, _ in bad.problems] == ["monthly_spend", "renewal_date", "plan"]
    assert all("a lot" not in why and "tuesday" not in why for _, why in bad.problems)
    assert bad.metadata == {"x": 1}


def test_unknown_properties_can_be_refused() -> None:
    schema = PropertySchema(properties={}, unknown_properties="reject")
    checked = check(schema, {"anything": 1, "removed": None})
    assert [key for key, _ in checked.problems] == ["anything", "removed"]
    assert checked.metadata == {}
