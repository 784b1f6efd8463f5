"""Userpilot's error shape, and the one exception the simulator raises to answer with it.

Userpilot answers errors as `{"errors": [{"error", "error_code", "message", "details"}]}`;
the simulator uses that shape everywhere (its own `/_sim/` routes too) so clients under test
exercise their real error parsing.
"""

from __future__ import annotations

from http import HTTPStatus

# Fixed names for the statuses clients branch on (HTTPStatus phrases vary across Pythons).
_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_names(status: int) -> tuple[str, str]:
    """`("too_many_requests", "TOO_MANY_REQUESTS")` for 429, and so on."""
    name = _NAMES.get(status)
    if name is None:
        try:
            name = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            name = "error"
    return name, name.upper()


def error_body(
    status: int,
    message: str,
    details: dict[str, object] | None = None,
    *,
    error: str | None = None,
    error_code: str | None = None,
) -> object:
    """The JSON body of an error answer; `error`/`error_code` default to the status's names."""
    default_error, default_code = error_names(status)
    error = default_error if error is None else error
    error_code = default_code if error_code is None else error_code
    return {
        "errors": [
            {"error": error, "error_code": error_code, "message": message, "details": details or {}}
        ]
    }


class SimulatorError(Exception):
    """Answer `status` with Userpilot's error body; rendered by the app's single handler."""

    def __init__(
        self,
        status: int,
        message: str,
        details: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        *,
        error: str | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        self.error = error
        self.error_code = error_code

    def body(self) -> object:
        return error_body(
            self.status, self.message, self.details, error=self.error, error_code=self.error_code
        )
