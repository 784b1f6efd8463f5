"""Bulk drain benchmark: a backlog of distinct companies drained with bulk jobs on and off.

Starts one Userpilot simulator at Userpilot's figures scaled by `--scale` on both paths (real
time 600*S calls/min, bulk jobs 1800*S rows/min), so the run stays short, and for each mode,
`RELAY_UPSTREAM_BULK=auto` then `off`, in the same run:

- resets the simulator (`POST /_sim/reset`) and starts the relay on a fresh store (a new SQLite
  file, or a new database on `--database-url`'s PostgreSQL server) with
  `RELAY_RATE_LIMIT_PER_MINUTE=600*S` (so the bulk threshold, which follows the rate, scales
  too) and `RELAY_BULK_POLL_SECONDS=max(0.2, 5/S)`;
- loads the backlog (`--companies`, 20,000 by default) as `POST /companies/bulk` requests of
  10,000 distinct companies each; the clock starts at the first request;
- waits until every batch is done (`GET /batches/{id}`), then reads `/_sim/stats` and checks
  every company's metadata in the simulator against what was sent.

It prints, per mode, the drain time against the real-time minimum (companies / calls per
second), Userpilot's calls and rows per company, 429s and jobs, and the headline ratio
drain(auto) / drain(off).

    .venv/bin/python -m bench.bulk_drain [--scale 10] [--companies 20000]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--log-dir DIR]

The default scale, 10, is what one relay keeps up with on the 2-core development machine: the
`off` run's drain / minimum stays near 1.0 (1.03 measured), and both modes take under five
minutes. The relay's logs are kept in `--log-dir` (a new temporary folder by default, printed
at the end).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from app.simulator.process import SimulatorProcess
from tests.relay import ADMIN_KEY, INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY, RelayProcess

REALTIME_PER_MINUTE = 600  # Userpilot's real-time limit
BULK_ROWS_PER_MINUTE = 1800  # Userpilot's bulk job pace
MAX_BULK_REQUEST = 10_000  # companies in one POST /companies/bulk
MODES = ("auto", "off")


@dataclass
class Result:
    mode: str
    drain_seconds: float | None  # None: not done within the timeout
    counts: dict[str, int]
    stats: dict[str, Any]
    jobs: dict[str, int]
    ok: int
    mismatched: int
    missing: int
    log_path: Path
    log_lines: dict[tuple[str, str], int] = field(default_factory=dict)


def backlog(companies: int) -> list[tuple[str, dict[str, Any]]]:
    """Distinct companies, each with a couple of properties."""
    plans = ("free", "pro", "enterprise")
    return [
        (
            f"drain-{i:06d}",
            {"plan": plans[i % 3], "seats": i % 500 + 1, "mrr": round(i * 0.37, 2), "trial": i % 2},
        )
        for i in range(companies)
    ]


@contextlib.contextmanager
def fresh_store(database_url: str | None, folder: Path, mode: str) -> Iterator[str]:
    """A new, empty store for one mode: a SQLite file, or a database on the server."""
    if database_url is None:
        yield f"sqlite:///{folder / f'relay-{mode}.db'}"
        return
    from bench.postgres import fresh_database  # psycopg only when PostgreSQL is asked for

    with fresh_database(database_url) as url:
        yield url


def log_summary(
    path: Path, levels: tuple[str, ...] = ("warning", "error")
) -> dict[tuple[str, str], int]:
    """The relay log's lines at `levels`, counted by (level, message)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in levels:
            counts[(str(entry["level"]), str(entry.get("msg", ""))[:100])] += 1
    return dict(counts)


def run_mode(
    mode: str,
    sim: SimulatorProcess,
    updates: list[tuple[str, dict[str, Any]]],
    database_url: str,
    log_path: Path,
    args: argparse.Namespace,
) -> Result:
    scale: float = args.scale
    rate = round(REALTIME_PER_MINUTE * scale)
    sim.reset()
    relay = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": database_url,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_LOG_LEVEL": args.log_level,
            "RELAY_RATE_LIMIT_PER_MINUTE": str(rate),
            "RELAY_UPSTREAM_BULK": mode,
            "RELAY_BULK_POLL_SECONDS": f"{max(0.2, 5.0 / scale):g}",
        },
        log_path,
    )
    bodies = [
        orjson.dumps(
            {
                "companies": [
                    {"company_id": c, "metadata": m} for c, m in updates[i : i + MAX_BULK_REQUEST]
                ]
            }
        )
        for i in range(0, len(updates), MAX_BULK_REQUEST)
    ]
    minimum = len(updates) / (rate / 60)
    timeout = args.timeout or max(60.0, 2.5 * minimum)
    ingest = {"Authorization": f"Bearer {INGEST_KEY}", "Content-Type": "application/json"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    drain: float | None = None
    counts: collections.Counter[str] = collections.Counter()
    try:
        with httpx.Client(base_url=relay.url, timeout=60) as client:
            started = time.monotonic()
            batches = []
            for body in bodies:
                r = client.post("/companies/bulk", content=body, headers=ingest)
                assert r.status_code == 202, r.text
                batches.append(r.json()["batch_id"])
            ingested = time.monotonic() - started
            print(
                f"  {mode}: {len(updates):,} companies stored in {ingested:.1f} s", file=sys.stderr
            )
            pending = set(batches)
            last_report = started
            finished: dict[str, dict[str, int]] = {}
            while pending and time.monotonic() - started < timeout:
                for batch_id in sorted(pending):
                    r = client.get(f"/batches/{batch_id}", headers=admin)
                    assert r.status_code == 200, r.text
                    if r.json()["done"]:
                        pending.discard(batch_id)
                        finished[batch_id] = r.json()["counts"]
                if not pending:
                    drain = time.monotonic() - started
                    break
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    now = sim.stats()
                    print(
                        f"  {mode}: {time.monotonic() - started:.0f} s, "
                        f"{now['identify_accepted']:,} calls, "
                        f"{now['bulk_rows_applied']:,} bulk rows applied",
                        file=sys.stderr,
                    )
                time.sleep(0.2)
            for batch_id in batches:
                batch_counts = finished.get(batch_id)
                if batch_counts is None:
                    batch_counts = client.get(f"/batches/{batch_id}", headers=admin).json()[
                        "counts"
                    ]
                counts.update(batch_counts)
            jobs: collections.Counter[str] = collections.Counter()
            cursor: str | None = None
            while True:
                params: dict[str, str | int] = {"limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = client.get("/jobs", params=params, headers=admin).json()
                jobs.update(job["status"] for job in page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
        stats = sim.stats()
        seen = sim.companies()
        ok = sum(1 for c, m in updates if seen.get(c) == m)
        missing = sum(1 for c, _ in updates if c not in seen)
    finally:
        relay.stop()
    return Result(
        mode=mode,
        drain_seconds=drain,
        counts=dict(counts),
        stats=stats,
        jobs=dict(jobs),
        ok=ok,
        mismatched=len(updates) - ok - missing,
        missing=missing,
        log_path=log_path,
        log_lines=log_summary(log_path),
    )


def report(results: dict[str, Result], companies: int, args: argparse.Namespace) -> None:
    scale: float = args.scale
    rate = REALTIME_PER_MINUTE * scale / 60
    bulk_rate = BULK_ROWS_PER_MINUTE * scale / 60
    minimum = companies / rate
    print(
        f"\nBulk drain, {companies:,} distinct companies, scale {scale:g}: real time "
        f"{rate * 60:,.0f}/min, bulk {bulk_rate * 60:,.0f} rows/min, "
        f"threshold {rate * 60:,.0f}, poll {max(0.2, 5.0 / scale):g} s; one run on this machine"
    )
    print(
        f"real-time minimum: {minimum:.1f} s ({companies:,} / {rate:g} per s); "
        f"both paths at full pace: {companies / (rate + bulk_rate):.1f} s"
    )
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("drain s", lambda r: "timeout" if r.drain_seconds is None else f"{r.drain_seconds:.1f}"),
        (
            "drain / minimum",
            lambda r: "-" if r.drain_seconds is None else f"{r.drain_seconds / minimum:.2f}",
        ),
        ("identify calls", lambda r: f"{r.stats['identify_calls']:,}"),
        ("bulk rows received", lambda r: f"{r.stats['bulk_rows_received']:,}"),
        (
            "(calls + rows) / companies",
            lambda r: (
                f"{(r.stats['identify_calls'] + r.stats['bulk_rows_received']) / companies:.3f}"
            ),
        ),
        ("429s (throttled)", lambda r: f"{r.stats['throttled']}"),
        ("jobs created", lambda r: f"{r.stats['jobs_created']}"),
        (
            "jobs failed / conflicted",
            lambda r: f"{r.stats['jobs_failed']} / {r.stats['jobs_conflicted']}",
        ),
        (
            "relay jobs by status",
            lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r.jobs.items())) or "-",
        ),
        (
            "delivered / dead",
            lambda r: f"{r.counts.get('delivered', 0):,} / {r.counts.get('dead', 0)}",
        ),
        ("metadata OK / mismatch / missing", lambda r: f"{r.ok:,} / {r.mismatched} / {r.missing}"),
    ]
    print(f"{'':34}" + "".join(f"{mode:>16}" for mode in results))
    for label, cell in rows:
        print(f"{label:34}" + "".join(f"{cell(r):>16}" for r in results.values()))
    auto, off = results.get("auto"), results.get("off")
    if auto and off and auto.drain_seconds and off.drain_seconds:
        print(
            f"\ndrain(auto) / drain(off): {auto.drain_seconds / off.drain_seconds:.2f} "
            "(target <= 0.5, expected near 0.3)"
        )
    for r in results.values():
        calls = (r.stats["identify_calls"] + r.stats["bulk_rows_received"]) / companies
        print(
            f"{r.mode}: (calls + rows) / companies {calls:.3f} (target <= 1.1), "
            f"429s {r.stats['throttled']} (target 0)"
        )
    if off and off.drain_seconds:
        pace = off.drain_seconds / minimum
        verdict = "keeps" if pace <= 1.1 else "does NOT keep"
        print(f"off: drain / minimum {pace:.2f}: the dispatcher {verdict} the scaled pace")
    for r in results.values():
        lines = sorted(r.log_lines.items(), key=lambda item: -item[1])
        print(f"\nrelay log ({r.mode}), {r.log_path}: warnings and errors")
        for (level, msg), count in lines[:12] or [(("-", "none"), 0)]:
            print(f"  {count:>7}  {level:8} {msg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=10.0, help="Userpilot's figures times S")
    parser.add_argument("--companies", type=int, default=20_000)
    parser.add_argument("--modes", default=",".join(MODES), help="auto,off (in this order)")
    parser.add_argument("--timeout", type=float, help="seconds per mode (default 2.5 x minimum)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server URL that may create databases (default: SQLite files)",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="where the relay logs go (default: a temp dir)"
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    args = parser.parse_args()
    if not math.isfinite(args.scale) or args.scale <= 0:
        sys.exit("--scale must be positive")
    if args.companies < 1:
        sys.exit("--companies must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        sys.exit("--modes takes auto, off or both")
    log_dir: Path = args.log_dir or Path(tempfile.mkdtemp(prefix="bulk-drain-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    updates = backlog(args.companies)
    rate = round(REALTIME_PER_MINUTE * args.scale)
    rows = round(BULK_ROWS_PER_MINUTE * args.scale)
    results: dict[str, Result] = {}
    with (
        SimulatorProcess(
            api_keys=[UPSTREAM_KEY],
            rate_limit_per_minute=rate,
            extra_args=[
                "--bulk-rows-per-minute",
                str(rows),
                "--request-log-limit",
                str(max(1000, 2 * args.companies)),
            ],
        ) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for mode in modes:
            print(f"mode {mode} ...", file=sys.stderr)
            with fresh_store(args.database_url, Path(tmp), mode) as url:
                results[mode] = run_mode(
                    mode, sim, updates, url, log_dir / f"relay-{mode}.log", args
                )
    report(results, args.companies, args)


if __name__ == "__main__":
    main()
