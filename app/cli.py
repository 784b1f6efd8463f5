"""The `userpilot-relay` command: `migrate` the store's schema, print the `openapi` document.

`userpilot-relay migrate` (or `python -m app.cli migrate`) applies pending migrations to
`RELAY_DATABASE_URL` and exits: run it as a release step or a Helm hook when schema changes
should not wait for the first replica to start (they are applied at start-up anyway, safely
when several replicas start at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.config import Settings
from app.domain.errors import StoreUnavailable
from app.store.connect import open_store
from app.store.migrations import migrations


class DatabaseSettings(BaseSettings):
    """Only the database URL: migrating needs neither the Userpilot key nor relay keys."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    relay_database_url: str = Settings.model_fields["relay_database_url"].default

    @field_validator("relay_database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return Settings._database_url(value)


def _database_url(given: str | None) -> str:
    try:
        if given is not None:
            return DatabaseSettings(relay_database_url=given).relay_database_url
        return DatabaseSettings().relay_database_url
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise SystemExit(f"userpilot-relay migrate: RELAY_DATABASE_URL {message}") from None


async def _migrate(database_url: str) -> str:
    store = open_store(database_url)
    await store.open()
    await store.close()
    postgres = not database_url.startswith("sqlite:///")
    versions = migrations("postgres" if postgres else "sqlite")
    applied = store.applied_migrations
    kind = "PostgreSQL" if postgres else "SQLite"
    latest = max(m.version for m in versions)
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
