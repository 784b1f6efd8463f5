"""Versioned schema migrations as `.sql` files, one folder per backend.

`NNNN_name.sql` is version NNNN; versions apply in order, each once, at start-up and by
`userpilot-relay migrate`. Add a file with the next number; never edit one that has shipped.
Both folders describe the same tables (a test compares them); they differ where the engines
do (types, identity, triggers).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Literal


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    script: str

    def statements(self) -> list[str]:
        """The script split into statements (for a driver that runs one at a time).

        Split where SQLite says a statement is complete, so a trigger's body stays whole.
        """
        statements: list[str] = []
        current = ""
        for line in self.script.splitlines(keepends=True):
            current += line
            if sqlite3.complete_statement(current):
                statements.append(current.strip())
                current = ""
        if current.strip() and not all(
            part.strip().startswith("--") for part in current.strip().splitlines()
        ):
            statements.append(current.strip())
        return statements


def migrations(backend: Literal["sqlite", "postgres"]) -> list[Migration]:
    """The backend's migrations in version order."""
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations are not numbered 1, 2, 3...")
    return found
