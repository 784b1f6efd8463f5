"""PostgreSQL ingest benchmark: durable ingest on PostgreSQL next to SQLite, and two relay
processes on PostgreSQL next to one, all in the same run.

Reuses `bench.ingest` (same wrk script, same 10,000-company bulk bodies, same process start)
and drives, in turns so that drift on a shared machine hits every store alike:

- the floor (`bench.floor_app`, 202 without storing), for reference;
- the relay on a fresh SQLite file;
- the relay on a fresh PostgreSQL database, one process;
- the relay on a fresh PostgreSQL database, two processes (`uvicorn --workers 2`).

    .venv/bin/python -m bench.postgres [--duration 10] [--rounds 2] [--connections 32]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Needs `wrk` and a PostgreSQL server where the admin URL may create databases. Read the ratios,
not the absolute figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from app.simulator.process import SimulatorProcess
from bench.ingest import Figures, bulk, start, wrk
from tests.relay import RELAY_KEYS, UPSTREAM_KEY

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Setup:
    name: str
    module: str
    workers: int
    store: str  # "sqlite", "postgres" or "none"


SETUPS = [
    Setup("floor (202, no storing)", "bench.floor_app:app", 1, "none"),
    Setup("SQLite, 1 process", "app.main:app", 1, "sqlite"),
    Setup("PostgreSQL, 1 process", "app.main:app", 1, "postgres"),
    Setup("PostgreSQL, 2 processes", "app.main:app", 2, "postgres"),
]


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server (dropped after); yields its URL."""
    name = f"relay_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run_one(
    setup: Setup, env: dict[str, str], database_url: str, args: argparse.Namespace
) -> tuple[Figures, float]:
    process, url = start(setup.module, {**env, "RELAY_DATABASE_URL": database_url}, setup.workers)
    try:
        wrk(url, 2, args.connections)  # warm-up: connections, caches, prepared statements
        figures = wrk(url, args.duration, args.connections)
        return figures, bulk(url, args.bulk_rounds)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per setup")
    parser.add_argument("--rounds", type=int, default=2, help="turns over every setup")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bulk-rounds", type=int, default=5)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    try:
        psycopg.connect(args.admin_url, connect_timeout=3).close()
    except psycopg.Error as exc:
        sys.exit(f"PostgreSQL at {args.admin_url} is unreachable: {exc}")

    results: dict[str, list[tuple[Figures, float]]] = {s.name: [] for s in SETUPS}
    with (
        SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_LOG_LEVEL": "WARNING",
        }
        for round_ in range(args.rounds):
            for setup in SETUPS:
                print(f"round {round_ + 1}/{args.rounds}: {setup.name} ...", file=sys.stderr)
                if setup.store == "postgres":
                    with fresh_database(args.admin_url) as url:
                        results[setup.name].append(run_one(setup, env, url, args))
                else:
                    url = f"sqlite:///{Path(tmp) / f'relay-{round_}-{setup.store}.db'}"
                    results[setup.name].append(run_one(setup, env, url, args))
                sim.reset()

    rps = {name: statistics.median(f.rps for f, _ in runs) for name, runs in results.items()}
    bulk_rate = {name: statistics.median(b for _, b in runs) for name, runs in results.items()}
    print(
        f"\nDurable ingest, POST /companies, {args.connections} connections, "
        f"{args.duration} s each, median of {args.rounds} rounds, one run on this machine"
    )
    print(f"{'':28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'bulk co/s':>12}")
    for name, runs in results.items():
        p50 = statistics.median(f.p50_ms for f, _ in runs)
        p99 = statistics.median(f.p99_ms for f, _ in runs)
        errors = sum(f.errors for f, _ in runs)
        print(
            f"{name:28}{rps[name]:>9.0f}{p50:>9.2f}{p99:>9.2f}{errors:>9}{bulk_rate[name]:>12,.0f}"
        )
    sqlite, pg1, pg2 = (s.name for s in SETUPS[1:])
    floor = SETUPS[0].name
    print(f"\nPostgreSQL / SQLite (1 process each):   {rps[pg1] / rps[sqlite]:.2f}")
    print(f"PostgreSQL 2 processes / 1 process:     {rps[pg2] / rps[pg1]:.2f}")
    print(f"PostgreSQL 1 process / floor:           {rps[pg1] / rps[floor]:.2f}")
    print(f"SQLite / floor:                         {rps[sqlite] / rps[floor]:.2f}")
    print(f"bulk, PostgreSQL / SQLite:              {bulk_rate[pg1] / bulk_rate[sqlite]:.2f}")


if __name__ == "__main__":
    main()
