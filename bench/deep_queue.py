"""Ingest with a deep queue: single-update `POST /companies` with 1,000,000 updates queued,
against the same relay with an empty queue, in one run (issue 11: within 10 %), and the
relay's memory with the deep queue (target: RSS at most 150 MB).

Userpilot is down for the whole run (the simulator answers 503), as in the outage that builds
such a queue: nothing drains, the breaker probes, the bulk driver tries its jobs. The queue is
filled straight into the database between the two measurements (a million requests would take
minutes), as rows exactly like the ones `POST /companies` stores, over 50,000 companies.

    .venv/bin/python -m bench.deep_queue [--queued 1000000] [--duration 10]
        [--database-url postgresql://...]

Needs `wrk` (Debian: apt-get install wrk). Read the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from app.simulator.process import SimulatorProcess
from bench.ingest import Figures, start, wrk
from tests.relay import RELAY_KEYS, UPSTREAM_KEY

COMPANIES = 50_000
_COLUMNS = (
    "id, company_id, metadata, status, source, caller, created_at, updated_at, "
    "next_attempt_at, enqueued_at"
)
SQLITE_FILL = f"""
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
    INSERT INTO deliveries ({_COLUMNS})
    SELECT lower(hex(randomblob(16))), 'deep' || (i % {COMPANIES}),
        '{{"plan":"pro","seats":' || i || ',"mrr":99.5}}', 'queued', 'api', 'svc',
        :now, :now, :now, :now
    FROM n
"""
POSTGRES_FILL = f"""
    INSERT INTO deliveries ({_COLUMNS})
    SELECT md5(random()::text || i), 'deep' || (i % {COMPANIES}),
        convert_to('{{"plan":"pro","seats":' || i || ',"mrr":99.5}}', 'UTF8'), 'queued', 'api',
        'svc', %(now)s, %(now)s, %(now)s, %(now)s
    FROM generate_series(1, %(count)s) AS i
"""


def fill(database_url: str, count: int) -> float:
    """Queue `count` updates straight into the store; answers the seconds it took."""
    started = time.perf_counter()
    now = time.time()
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(SQLITE_FILL, {"count": count, "now": now})
        conn.close()
    else:
        import psycopg

        with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as c:
            c.execute(POSTGRES_FILL, {"count": count, "now": now})  # type: ignore[arg-type]
            c.execute("ANALYZE deliveries")
    return time.perf_counter() - started


def rss_mb(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        int(fields["VmRSS"].split()[0]) / 1024,
        int(fields["VmHWM"].split()[0]) / 1024,
    )


def measure(env: dict[str, str], args: argparse.Namespace) -> tuple[Figures, tuple[float, float]]:
    process, url = start("app.main:app", env, 1)
    try:
        wrk(url, 2, args.connections)  # warm-up
        figures = wrk(url, args.duration, args.connections)
        return figures, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")

    with SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim, tempfile.TemporaryDirectory() as tmp:
        sim.add_fault(action="status", status=503, times=1_000_000_000)
        url = args.database_url or f"sqlite:///{Path(tmp) / 'relay.db'}"
        env = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_DATABASE_URL": url,
        }
        first, empty_rss = measure(env, args)
        took = fill(url, args.queued)
        deep, deep_rss = measure(env, args)
        # The empty queue again, on a fresh database, after: drift during the run (the
        # machine, the simulator) falls on both sides of the ratio.
        again_url = url + "-again" if url.startswith("sqlite") else url
        if url.startswith("sqlite"):
            again, _ = measure({**env, "RELAY_DATABASE_URL": again_url}, args)
            empty = Figures(
                rps=(first.rps + again.rps) / 2,
                p50_ms=(first.p50_ms + again.p50_ms) / 2,
                p99_ms=max(first.p99_ms, again.p99_ms),
                errors=first.errors + again.errors,
            )
        else:
            empty = first

    store = url.split(":", 1)[0]
    print(f"\nSingle-update ingest ({store}), Userpilot down, {args.connections} connections")
    print(f"{'':34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'RSS MB':>9}")
    for name, f, rss in (
        ("empty queue (before and after)", empty, empty_rss),
        (f"{args.queued:,} queued", deep, deep_rss),
    ):
        print(f"{name:34}{f.rps:>9.0f}{f.p50_ms:>9.2f}{f.p99_ms:>9.2f}{f.errors:>9}{rss[0]:>9.0f}")
    print(f"(queue filled in {took:.1f} s)")
    print(f"deep / empty: {deep.rps / empty.rps:.2f} (target >= 0.9)")
    print(f"RSS with the deep queue: {deep_rss[0]:.0f} MB, peak {deep_rss[1]:.0f} MB (<= 150)")


if __name__ == "__main__":
    main()
