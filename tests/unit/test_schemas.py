"""The fast JSON reader of company bodies never disagrees with the authoritative models."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "body",
    [
        b'{"company_id": "a"}',
        b'{"company_id": "a", "metadata": {"x": 1, "y": null, "z": true, "w": 1.5, "s": ""}}',
        b'{"company_id": " ", "metadata": {}}',
        b'{"company_id": "", "metadata": {}}',
        b'{"company_id": 1}',
        b'{"company_id": "a", "metadata": {"": 1}}',
        b'{"company_id": "a", "metadata": {" ": 1}}',
        b'{"company_id": "a", "metadata": {"x": [1]}}',
        b'{"company_id": "a", "metadata": {"x": {"y": 1}}}',
        b'{"company_id": "a", "metadata": {"x": NaN}}',
        b'{"company_id": "a", "metadata": {"x": 1e400}}',
        b'{"company_id": "a", "metadata": {"x": 123456789012345678901234567890}}',
        b'{"company_id": "a", "metadata": {"x": 18446744073709551615}}',
        b'{"company_id": "a", "metadata": null}',
        b'{"company_id": "a", "extra": 1}',
        b'{"companyId": "a"}',
        b'[{"company_id": "a"}]',
        b'{"company_id": "' + b"x" * 256 + b'"}',
        b'{"company_id": "a", "metadata": {"x": 1, "x": [2]}}',
    ],
)
def test_fast_path_accepts_only_what_the_models_accept(body: bytes) -> None:
    """The accelerator never accepts what the authoritative models refuse, nor disagrees."""
    from pydantic import ValidationError

    from app.api.schemas import BulkIn, CompanyIn, fast_companies

    for bulk, wrapped in ((False, body), (True, b'{"companies": [' + body + b"]}")):
        fast = fast_companies(wrapped, bulk=bulk)
        try:
            model = (
                BulkIn.model_validate_json(wrapped)
                if bulk
                else CompanyIn.model_validate_json(wrapped)
            )
        except ValidationError:
            assert fast is None, wrapped
            continue
        if fast is not None:
            companies = model.companies if isinstance(model, BulkIn) else [model]
            assert fast == [(c.company_id, c.metadata) for c in companies]
