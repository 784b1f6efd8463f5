"""The `userpilot-relay` command: `migrate` the store's schema, print the `openapi` document.

`userpilot-relay migrate` (or `python -m app.cli migrate`) applies pending migrations to
`RELAY_DATABASE_URL` (read from the environment and `.env` exactly as the service reads it,
through `app.config`) and exits: run it as a release step or a Helm hook when schema changes
should not wait for the first replica to start (they are applied at start-up anyway, safely
when several replicas start at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from app.config import ConfigError, load_store_settings
from app.domain.errors import StoreUnavailable
from app.store.connect import open_store
from app.store.migrations import migrations


def _database_url(given: str | None) -> str:
    """`--database-url`, else RELAY_DATABASE_URL read as the service reads it (the environment,
    then `.env`), else the default; refused in the service's own words."""
    try:
        return load_store_settings(given).relay_database_url
    except ConfigError as exc:
        raise SystemExit(f"userpilot-relay migrate: {exc}") from None


async def _migrate(database_url: str) -> str:
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


def migrate(database_url: str | None = None) -> int:
    url = _database_url(database_url)
    try:
        print(asyncio.run(_migrate(url)))
    except StoreUnavailable as exc:
        print(f"userpilot-relay migrate: {exc}", file=sys.stderr)
        return 1
    return 0


def openapi() -> int:
    from app.main import create_app

    sys.stdout.write(json.dumps(create_app().openapi(), indent=2, sort_keys=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="userpilot-relay", description="Operate the userpilot-relay service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate_cmd = commands.add_parser(
        "migrate",
        help="apply pending schema migrations to RELAY_DATABASE_URL and exit",
        description="Apply pending schema migrations to the relay's store and exit.",
    )
    migrate_cmd.add_argument(
        "--database-url",
        help="the store to migrate (default: RELAY_DATABASE_URL, else sqlite:///relay.db)",
    )
    commands.add_parser(
        "openapi",
        help="print the OpenAPI document (JSON) to stdout",
        description="Print the relay's OpenAPI document as JSON.",
    )
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return migrate(args.database_url)
    return openapi()


if __name__ == "__main__":
    raise SystemExit(main())
