"""Console sessions: a signed cookie, its CSRF token, and sign-in throttling.

The cookie holds the admin key's name, an expiry and a CSRF token, signed with HMAC-SHA256;
never a key. Its secret is `RELAY_CONSOLE_SESSION_SECRET` when set, else derived from the
configured secrets (the Userpilot key's and every relay key's digest, under a fixed label), so
every replica with the same settings accepts the same cookie without new configuration, and
rotating any of those keys ends every session. A session whose key is no longer configured as
an admin key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from app.config import ApiKey, Settings

COOKIE = "relay_console"
_LABEL = b"userpilot-relay console session v1"


def session_secret(settings: Settings) -> bytes:
    """The key every replica signs sessions with (see the module docstring)."""
    if settings.relay_console_session_secret is not None:
        given = settings.relay_console_session_secret.get_secret_value().encode()
        return hmac.new(_LABEL, given, hashlib.sha256).digest()
    upstream = hashlib.sha256(settings.userpilot_api_key.get_secret_value().encode()).digest()
    callers = b"".join(
        k.name.encode() + b"\0" + k.role.encode() + b"\0" + k.digest
        for k in sorted(settings.relay_api_keys, key=lambda k: k.name)
    )
    return hmac.new(_LABEL, upstream + callers, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: the admin key's name, when the session ends, its CSRF token."""

    name: str
    expires: int
    csrf: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(
    secret: bytes, key: ApiKey, *, hours: float, now: float | None = None
) -> tuple[str, Session]:
    """A new session for `key` and its cookie value."""
    expires = int((time.time() if now is None else now) + hours * 3600)
    session = Session(name=key.name, expires=expires, csrf=secrets.token_urlsafe(24))
    payload = f"{session.name}|{session.expires}|{session.csrf}".encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}", session


def verify(
    secret: bytes, value: str | None, keys: tuple[ApiKey, ...], *, now: float | None = None
) -> Session | None:
    """The session a cookie value holds, when its signature is ours, it has not expired and
    its key is still configured as an admin key; else None."""
    if not value or len(value) > 512 or not value.isascii():
        return None
    payload_text, dot, signature_text = value.partition(".")
    try:
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except ValueError:
        return None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not dot or not hmac.compare_digest(expected, signature):
        return None
    parts = payload.decode("ascii", "replace").split("|")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    name, expires, csrf = parts[0], int(parts[1]), parts[2]
    if expires <= (time.time() if now is None else now):
        return None
    if not any(k.name == name and k.role == "admin" for k in keys):
        return None
    return Session(name=name, expires=expires, csrf=csrf)


def csrf_matches(session: Session, presented: str | None) -> bool:
    """The form's token is this session's (compared in constant time)."""
    return presented is not None and hmac.compare_digest(
        session.csrf.encode(), presented.encode("utf-8", "replace")
    )


class LoginThrottle:
    """Failed sign-ins per client address, in memory: after `free` failures each attempt must
    wait, twice as long after every further failure (up to `longest` seconds); a success or
    `forget_after` seconds without a failure clears the address. At most `addresses` are kept
    (the least recently failed are dropped first)."""

    def __init__(
        self,
        *,
        free: int = 5,
        first: float = 1.0,
        longest: float = 300.0,
        forget_after: float = 900.0,
        addresses: int = 10_000,
    ) -> None:
        self.free = free
        self.first = first
        self.longest = longest
        self.forget_after = forget_after
        self.addresses = addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait(self, address: str, *, now: float | None = None) -> float:
        """Seconds `address` must still wait before its next attempt is checked (0: none)."""
        now = time.monotonic() if now is None else now
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        count, last = entry
        if now - last > self.forget_after:
            del self._failures[address]
            return 0.0
        if count < self.free:
            return 0.0
        delay = min(self.first * 2.0 ** (count - self.free), self.longest)
        return max(0.0, last + delay - now)

    def failed(self, address: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        count = self._failures.pop(address, (0, now))[0]
        self._failures[address] = (count + 1, now)
        while len(self._failures) > self.addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
