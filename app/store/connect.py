"""Which backend a database URL names: the one place that knows both."""

from __future__ import annotations

from app.store.base import Store


def open_store(database_url: str) -> Store:
    """The backend for a database URL (not yet opened)."""
    if database_url.startswith("sqlite:///"):
        from app.store.sqlite.store import SQLiteStore

        return SQLiteStore(database_url.removeprefix("sqlite:///"))
    from app.store.postgres.store import PostgresStore

    return PostgresStore(database_url)
