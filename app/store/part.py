"""A part of the store: a feature's own operations, run by the same engine as `Store`'s.

A feature whose state is its own (the property catalogue, backfills) keeps its plans and its
interface in one module under `app/store/` instead of growing `Store` and `SQLStore`: its class
extends `StorePart` and `SQLStore` builds one per store, sharing its transactions (`write`,
`read`), so the part runs the same SQL on SQLite and PostgreSQL with nothing backend-specific.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from app.store.sql import Plan

T = TypeVar("T")


class Writer(Protocol):
    def __call__(self, plan: Callable[[], Plan[T]], *, atomic: bool = ...) -> Awaitable[T]: ...


class Reader(Protocol):
    def __call__(self, plan: Callable[[], Plan[T]], *, snapshot: bool = ...) -> Awaitable[T]: ...


class StorePart:
    """Operations over the store's engine: `write` commits a plan in one transaction (the
    factory may run again when the backend retries it), `read` runs a plan that only reads."""

    def __init__(self, write: Writer, read: Reader) -> None:
        self._write = write
        self._read = read
