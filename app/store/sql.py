"""How the SQL is written once and run by both backends.

Every store operation is a *plan*: a generator that yields `Statement`s and receives each one's
`Result`, so the transaction's logic (what to read, what to write, when to stop) is written
once. A backend only runs plans: SQLite with the sync driver (writes in its writer thread,
reads in a small pool), PostgreSQL on a pooled connection with the async one (`drive` and
`drive_async`).

Statements are written in one SQL that both engines accept, in PostgreSQL's spelling, with
`:name` parameters and `{now}` for the transaction's clock. Each backend's `Dialect` renders
them:

- parameters: `:name` stays for SQLite, becomes `%(name)s` for psycopg;
- `{now}`: the database clock on PostgreSQL (replicas with skewed clocks agree), a `:now`
  parameter bound once per plan on SQLite;
- lists: `= ANY(:ids)` / `<> ALL(:ids)` stay for PostgreSQL (arrays), and read a JSON array
  through `json_each` on SQLite; `GREATEST`/`LEAST` are SQLite's `MAX`/`MIN`;
- locks: `FOR UPDATE [SKIP LOCKED]` and the `{token}`s that take advisory locks exist only on
  PostgreSQL; SQLite has one writer, so they render to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Params = Mapping[str, Any]
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a plan: its SQL, and its parameters (a list of them with `many`)."""

    sql: str
    params: Params | Sequence[Params] = field(default_factory=dict)
    many: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement answered: its rows (if it returns any) and how many rows it touched."""

    rows: list[Row]
    rowcount: int

    def one(self) -> Row | None:
        return self.rows[0] if self.rows else None


Plan = Generator[Statement, Result, T]

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_ANY = re.compile(r"= ANY\(:(\w+)\)")
_ALL = re.compile(r"<> ALL\(:(\w+)\)")
_LOCKING = re.compile(r"\s+FOR UPDATE(?: SKIP LOCKED)?")


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the shared SQL (see the module docstring)."""

    name: str
    now: str
    tokens: Mapping[str, str]
    max_batch: int | None = None  # the most updates one batch's block of sequence numbers holds
    _rendered: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def render(self, sql: str) -> str:
        """The statement in this engine's spelling (rendered once, then remembered)."""
        text = self._rendered.get(sql)
        if text is None:
            text = self._rendered[sql] = self._render(sql)
        return text

    def _render(self, sql: str) -> str:
        text = sql.replace("{now}", self.now)
        for token, value in self.tokens.items():
            text = text.replace("{" + token + "}", value)
        if self.name == "sqlite":
            text = _ANY.sub(r"IN (SELECT value FROM json_each(:\1))", text)
            text = _ALL.sub(r"NOT IN (SELECT value FROM json_each(:\1))", text)
            text = text.replace("GREATEST(", "MAX(").replace("LEAST(", "MIN(")
            return _LOCKING.sub("", text)
        return _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))


def filtered(base: str, **equal: object) -> tuple[str, dict[str, object]]:
    """`base` with `AND column = :column` for every filter given (None: not filtered)."""
    params = {column: value for column, value in equal.items() if value is not None}
    return base + "".join(f" AND {column} = :{column}" for column in params), params


def drive(plan: Plan[T], execute: Callable[[Statement], Result]) -> T:
    """Run a plan with a synchronous driver: answer what the plan returns."""
    try:
        statement = next(plan)
        while True:
            statement = plan.send(execute(statement))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def drive_async(plan: Plan[T], execute: Callable[[Statement], Awaitable[Result]]) -> T:
    """Run a plan with an asynchronous driver: answer what the plan returns."""
    try:
        statement = next(plan)
        while True:
            statement = plan.send(await execute(statement))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
