"""Connecting to PostgreSQL: the relay's URL as libpq parameters, and the database's clock.

Nothing here puts a password in a message: `describe` names host, port and database only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")
# Connection errors, and states where PostgreSQL cannot take writes (failover in progress).
UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)
UNAVAILABLE_OR_SLOW: tuple[type[Exception], ...] = (TimeoutError, *UNAVAILABLE)


class ClockOffset:
    """How far the database clock is ahead of this host's, estimated NTP-style.

    Each slot reservation is a sample: the database's clock against the midpoint of the
    round trip. The sample with the shortest round trip among the recent ones is the most
    accurate (a busy event loop only ever lengthens a round trip), so its offset is used.
    Replicas with skewed clocks still space their sends by the database's slots.
    """

    def __init__(self, keep: int = 32) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)
        self.offset = 0.0

    def sample(self, *, sent: float, received: float, remote: float) -> None:
        self._samples.append((received - sent, remote - (sent + received) / 2))
        self.offset = min(self._samples)[1]

    def local(self, remote: float) -> float:
        return remote - self.offset

    def remote(self, local: float) -> float:
        return local + self.offset


def conninfo_from_url(database_url: str) -> str:
    """libpq connection string for a relay database URL, with the relay's defaults added."""
    url = database_url.strip()
    if not url.startswith(_SCHEMES):
        raise ValueError("a PostgreSQL URL starts with postgresql:// (or postgres://)")
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    params: dict[str, Any] = conninfo_to_dict(url)
    params.setdefault("connect_timeout", "5")
    params.setdefault("application_name", "userpilot-relay")
    # Notice a dead server or network within seconds, not at the kernel's default two hours.
    params.setdefault("keepalives", "1")
    params.setdefault("keepalives_idle", "10")
    params.setdefault("keepalives_interval", "5")
    params.setdefault("keepalives_count", "3")
    return make_conninfo(**params)


def describe(conninfo: str) -> str:
    """Where the database is, for messages: host, port and name, never the password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def first_line(exc: BaseException) -> str:
    """An error's first line, short: enough for a log or a start-up refusal."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
