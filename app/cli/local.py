"""The commands that need no running relay: `migrate`, `openapi`, `hash-key`.

`userpilot-relay migrate` applies pending migrations to `RELAY_DATABASE_URL` (read from the
environment and `.env` exactly as the service reads it, through `app.config`) and exits: run it
as a release step or a Helm hook when schema changes should not wait for the first replica to
start (they are applied at start-up anyway, safely when several replicas start at once).
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import sys
from typing import Annotated

import typer

from app.cli.output import fail

# The store and settings modules are imported by `migrate` alone: the other commands start
# faster without them.


def _database_url(given: str | None) -> str:
    """`--database-url`, else RELAY_DATABASE_URL read as the service reads it (the environment,
    then `.env`), else the default; refused in the service's own words."""
    from app.config import ConfigError, load_store_settings

    try:
        return load_store_settings(given).relay_database_url
    except ConfigError as exc:
        fail(f"userpilot-relay migrate: {exc}")


async def _migrate(database_url: str) -> str:
    from app.store.migrations import migrations
    from app.store.store import open_store

    store = open_store(database_url)
    await store.open()
    await store.close()
    postgres = not database_url.startswith("sqlite:///")
    applied = store.applied_migrations
    kind = "PostgreSQL" if postgres else "SQLite"
    latest = max(m.version for m in migrations("postgres" if postgres else "sqlite"))
    if applied:
        done = ", ".join(str(v) for v in applied)
        return f"{kind} schema migrated to version {latest} (applied {done})"
    return f"{kind} schema at version {latest}"


def migrate(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The store to migrate (default: RELAY_DATABASE_URL, else sqlite:///relay.db).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply pending schema migrations to the relay's store and exit."""
    from app.domain.errors import StoreUnavailable

    url = _database_url(database_url)
    try:
        print(asyncio.run(_migrate(url)))
    except StoreUnavailable as exc:
        fail(f"userpilot-relay migrate: {exc}")


def openapi() -> None:
    """Print the relay's OpenAPI document (JSON) to stdout."""
    from app.main import create_app

    sys.stdout.write(json.dumps(create_app().openapi(), indent=2, sort_keys=False) + "\n")


def _read_key() -> str:
    """The key from stdin without its line ending; typed without echo on a terminal."""
    if sys.stdin.isatty():
        return getpass.getpass("relay key (not echoed): ")
    data = sys.stdin.buffer.read()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        fail("userpilot-relay hash-key: the key is not UTF-8 text", code=2)


def key_problem(key: str) -> str | None:
    """Why the relay could never match `key` sent as `Authorization: Bearer <key>`, if so."""
    if not key:
        return (
            'the key is empty: pipe it on stdin, e.g. printf %s "$KEY" | userpilot-relay hash-key'
        )
    if key != key.strip():
        return (
            "the key begins or ends with whitespace, which the relay strips from the "
            "Authorization header: no request could present it"
        )
    if not all(0x20 <= ord(c) < 0x7F for c in key):
        return (
            "the key holds a control or non-ASCII character, which an HTTP header cannot carry "
            "as is: no request could present it"
        )
    return None


def hash_key() -> None:
    """Read a relay key from stdin and print its RELAY_API_KEYS form, sha256:<hex>.

    Only the one line ending after the key is dropped. The key itself is never printed.
    """
    key = _read_key()
    problem = key_problem(key)
    if problem is not None:
        fail(f"userpilot-relay hash-key: {problem}", code=2)
    print("sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest())
