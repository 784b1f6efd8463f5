"""Talking to a running relay over its admin API, as `status` and `dead-letters` do.

The relay is found through `--url` or `RELAY_URL`, the key through `--admin-key` or
`RELAY_ADMIN_KEY` (a flag wins over its variable). The key is sent only as
`Authorization: Bearer …` and never printed: not in a message, not in a traceback.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer

from app import __version__
from app.cli.output import fail

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = 10.0

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="RELAY_URL", help="The relay's base URL.", rich_help_panel="Relay"
    ),
]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="RELAY_ADMIN_KEY",
        help="A relay key with the admin role (prefer the variable: a flag shows in `ps`).",
        show_default=False,
        rich_help_panel="Relay",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Relay:
    """One relay's admin API; every failure exits with one line naming the command."""

    def __init__(self, command: str, url: str, admin_key: str | None) -> None:
        self.command = f"userpilot-relay {command}"
        self.url = self._checked_url(url)
        if not admin_key or not admin_key.strip():
            fail(f"{self.command}: no admin key: set RELAY_ADMIN_KEY or pass --admin-key", code=2)
        self._key = admin_key.strip()
        if not all(0x20 < ord(c) < 0x7F for c in self._key):
            # A header cannot carry it, and an HTTP library's complaint would quote it.
            fail(
                f"{self.command}: the admin key holds a space, a control or a non-ASCII "
                "character: no request could present it (check how RELAY_ADMIN_KEY is quoted)",
                code=2,
            )

    def __repr__(self) -> str:
        return f"Relay(url={self.url!r})"

    def _checked_url(self, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail(f"{self.command}: RELAY_URL must be a full http(s) URL like {DEFAULT_URL}", code=2)
        if "@" in parts.netloc:
            fail(f"{self.command}: RELAY_URL must not carry credentials (user:password@)", code=2)
        if parts.query or parts.fragment:
            fail(f"{self.command}: RELAY_URL must not carry a query string or fragment", code=2)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def fail(self, message: str, *, code: int = 1) -> NoReturn:
        fail(f"{self.command}: {message}".replace(self._key, "<admin key>"), code=code)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        auth: bool = True,
        expect: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        """The relay's answer, if its status is in `expect`; exits on anything else. `body`, when
        not None, is sent as JSON."""
        headers = {"User-Agent": f"userpilot-relay-cli/{__version__}"}
        if auth:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            response = httpx.request(
                method,
                self.url + path,
                params=params,
                json=body,
                headers=headers,
                timeout=TIMEOUT,
            )
        except httpx.TimeoutException:
            self.fail(f"the relay at {self.url} did not answer within {TIMEOUT:g} s")
        except httpx.HTTPError as exc:
            self.fail(f"cannot reach the relay at {self.url}: {_reason(exc)}")
        if response.status_code in expect:
            return response
        message = error_message(response)
        if response.status_code == 401:
            self.fail(f"the relay at {self.url} refused the admin key: {message}")
        if response.status_code == 403:
            self.fail(f"the relay at {self.url} refused the key, it is not an admin key: {message}")
        self.fail(f"{method} {path}: {response.status_code} {message}")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            self.fail(f"{method} {path}: the answer is not JSON (is {self.url} a relay?)")


def error_message(response: httpx.Response) -> str:
    """The relay's `message`, else the HTTP reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.reason_phrase or "unexpected answer"


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.LocalProtocolError):  # its text may quote a header: the key
        return type(exc).__name__
    text = str(exc).strip()
    for inner in (exc.__cause__, exc.__context__):
        if not text and inner is not None:
            text = str(inner).strip()
    return text or type(exc).__name__
