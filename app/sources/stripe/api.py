"""The one call the relay makes to Stripe's API: read a customer it has not seen yet.

Only with `STRIPE_API_KEY`. Every failure is a `StripeApiError`, so that the caller parks the
event and tries again later instead of guessing a company.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from app import __version__

_API_TIMEOUT = 10.0


class StripeApiError(Exception):
    """Stripe's API did not answer usefully (network, 5xx, 401...): try again later."""


class StripeApi:
    """The one call the relay makes to Stripe: read a customer it has not seen."""

    def __init__(self, *, base_url: str, api_key: str, timeout: float = _API_TIMEOUT) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"userpilot-relay/{__version__}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            follow_redirects=False,
        )

    async def customer(self, *, customer_id: str) -> dict[str, Any] | None:
        """The customer object; None when Stripe does not know it or it was deleted."""
        try:
            response = await self._http.get(f"/v1/customers/{quote(customer_id, safe='')}")
        except httpx.HTTPError as exc:
            raise StripeApiError(f"{type(exc).__name__}: {exc}"[:300]) from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StripeApiError(f"Stripe answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise StripeApiError("Stripe answered something other than JSON") from None
        if not isinstance(body, dict) or body.get("deleted") is True:
            return None
        return body

    async def aclose(self) -> None:
        """Close the connection pool (the relay is stopping)."""
        await self._http.aclose()
