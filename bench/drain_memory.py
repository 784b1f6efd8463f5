"""Drain memory benchmark: a backlog built while Userpilot is down, drained through bulk jobs
and real-time calls when it is back; the relay's memory and ingest latency meanwhile (issue 20).

Targets: RSS <= 200 MB at any backlog size, ingest p99 <= 50 ms during the drain, and the drain
within 1.5 x the minimum Userpilot's two rates allow (companies / (real-time calls + bulk rows
per second)). The simulator runs at Userpilot's figures scaled by `--scale` on both paths (as in
`bench/bulk_drain.py`), so the run stays short. In one run:

- the relay starts on a fresh store with Userpilot down (every call 503), and single-update
  ingest is measured with the queue empty (the baseline);
- the relay stops; `--queued` updates over `--companies` companies go straight into the
  database (as `bench/deep_queue.py` does: a few million requests would take minutes), rows like
  the ones `POST /companies` stores after failing through the outage;
- the relay starts again on it, Userpilot still down; after a few seconds Userpilot comes back
  (`DELETE /_sim/faults`) and the clock starts; ingest is measured in 5 s windows (on 50 other
  companies, a light load) until every queued update of the backlog is delivered; the
  relay's RSS is sampled every 0.5 s.

It prints the drain time against the minimum, the peak RSS, ingest p99 before and during the
drain, how long the circuit breaker took to see Userpilot back, what Userpilot received, and
whether every company ended with its newest values.

    .venv/bin/python -m bench.drain_memory [--queued 350000] [--companies 5000] [--scale 2]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Ingest runs open loop at `--rate` single updates a second (each timed from when it was due),
so a stall shows in p99 rather than slowing the load. Read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import orjson

from app.simulator.process import SimulatorProcess
from bench.bulk_drain import BULK_ROWS_PER_MINUTE, REALTIME_PER_MINUTE, fresh_store, log_summary
from bench.deep_queue import rss_mb
from tests.relay import INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY, RelayProcess

RSS_TARGET = 200.0
P99_TARGET = 50.0
DRAIN_TARGET = 1.5
PROPERTIES = 8  # each update sets `n` and one of these, so merging has work to do
_COLUMNS = (
    "id, company_id, metadata, status, source, caller, attempts, created_at, updated_at, "
    "next_attempt_at, enqueued_at"
)
SQLITE_FILL = f"""
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1)
    INSERT INTO deliveries ({_COLUMNS})
    SELECT lower(hex(randomblob(16))), 'drain-' || (i % :companies),
        CAST('{{"n":' || (i / :companies) || ',"p' || (i / :companies % {PROPERTIES}) || '":'
            || i || ',"plan":"pro"}}' AS BLOB),
        'queued', 'api', 'svc', 1, :at, :at, :now, :at
    FROM n
"""
POSTGRES_FILL = f"""
    INSERT INTO deliveries ({_COLUMNS})
    SELECT md5(random()::text || i), 'drain-' || (i %% %(companies)s),
        convert_to('{{"n":' || (i / %(companies)s) || ',"p'
            || (i / %(companies)s %% {PROPERTIES}) || '":' || i || ',"plan":"pro"}}', 'UTF8'),
        'queued', 'api', 'svc', 1, %(at)s, %(at)s, %(now)s, %(at)s
    FROM generate_series(0, %(count)s - 1) AS i
"""
PENDING = (
    "SELECT count(*) FROM deliveries WHERE status IN ('queued', 'delivering') "
    "AND company_id LIKE 'drain-%'"
)


def paced_ingest(url: str, rate: float, seconds: float) -> list[float]:
    """Single updates (`POST /companies`, 50 other companies) sent at `rate` a second for
    `seconds`, each on time whatever the ones before it do (open loop); answers each one's
    latency in ms, from when it was due (a non-202 counts as infinite)."""

    async def run() -> list[float]:
        headers = {"Authorization": f"Bearer {INGEST_KEY}"}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

            async def one(n: int, due: float) -> float:
                body = {"company_id": f"ingest-{n % 50}", "metadata": {"seats": n, "x": None}}
                try:
                    r = await client.post("/companies", json=body, timeout=30)
                except httpx.HTTPError:
                    return math.inf
                return (time.perf_counter() - due) * 1000 if r.status_code == 202 else math.inf

            started = time.perf_counter()
            tasks = []
            for n in range(int(rate * seconds)):
                due = started + n / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(n, due)))
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else math.nan


def fill(database_url: str, count: int, companies: int) -> float:
    """Queue `count` updates of `companies` companies, as failed through an outage that began
    five minutes ago; answers the seconds it took."""
    started = time.perf_counter()
    now = time.time()
    params = {"count": count, "companies": companies, "now": now, "at": now - 300}
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(SQLITE_FILL, params)
        conn.close()
    else:
        import psycopg

        with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as c:
            c.execute(POSTGRES_FILL, params)
            c.execute("ANALYZE deliveries")
    return time.perf_counter() - started


def server_latency(url: str) -> dict[str, float]:
    """The relay's own count of `POST /companies` answers, cumulative by bucket bound (`le`)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if (
            line.startswith("userpilot_relay_http_request_duration_seconds_bucket{")
            and 'method="POST"' in line
            and 'route="/companies"' in line
        ):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pending(database_url: str) -> int:
    """The backlog's updates not delivered yet."""
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute(PENDING).fetchone()[0])
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as c:
        row = c.execute(PENDING.replace("%", "%%")).fetchone()
        return int(row[0]) if row else 0


def breaker_closed(log_path: Path, since: float) -> float | None:
    """Seconds from `since` (Userpilot back) to the relay's first "Userpilot answers again"
    after it, or None when it never said so."""
    with contextlib.suppress(OSError), log_path.open("rb") as lines:
        for line in lines:
            if b"Userpilot answers again" not in line:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                at = datetime.fromisoformat(orjson.loads(line)["ts"].replace("Z", "+00:00"))
                if at.timestamp() >= since:
                    return at.timestamp() - since
    return None


def expected(count: int, companies: int) -> dict[str, dict[str, object]]:
    """Each company's newest value per property, as the fill wrote them."""
    out: dict[str, dict[str, object]] = {}
    for i in range(count):
        c, n = i % companies, i // companies
        values = out.setdefault(f"drain-{c}", {"plan": "pro"})
        values["n"] = n
        values[f"p{n % PROPERTIES}"] = i
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=350_000)
    parser.add_argument("--companies", type=int, default=5_000)
    parser.add_argument("--scale", type=float, default=2.0, help="Userpilot's figures times S")
    parser.add_argument("--rate", type=float, default=200.0, help="single updates a second")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the drain")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--log-dir", type=Path, help="where the relay log goes (default: temp)")
    args = parser.parse_args()
    if args.queued < args.companies or args.companies < 1 or not math.isfinite(args.scale):
        sys.exit("--queued >= --companies >= 1 and a finite --scale, please")
    if args.scale <= 0:
        sys.exit("--scale must be positive")
    log_dir: Path = args.log_dir or Path(tempfile.mkdtemp(prefix="drain-memory-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "relay.log"
    rate = round(REALTIME_PER_MINUTE * args.scale)
    rows = round(BULK_ROWS_PER_MINUTE * args.scale)
    minimum = args.companies / ((rate + rows) / 60)
    windows: list[list[float]] = []
    starts: list[float] = []  # each window's start, seconds after Userpilot was back
    samples: list[float] = []

    with (
        SimulatorProcess(
            api_keys=[UPSTREAM_KEY],
            rate_limit_per_minute=rate,
            extra_args=["--bulk-rows-per-minute", str(rows)],
        ) as sim,
        tempfile.TemporaryDirectory() as tmp,
        fresh_store(args.database_url, Path(tmp), "drain") as url,
    ):
        env = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": url,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_RATE_LIMIT_PER_MINUTE": str(rate),
            "RELAY_BULK_POLL_SECONDS": f"{max(0.2, 5.0 / args.scale):g}",
            "RELAY_RETRY_MAX_SECONDS": "30",
        }
        sim.add_fault(action="status", status=503, times=1_000_000_000)
        relay = RelayProcess(env, log_path)
        try:
            assert relay.process is not None
            paced_ingest(relay.url, args.rate, 2)  # warm-up
            idle_cpu = cpu_seconds(relay.process.pid)
            baseline = paced_ingest(relay.url, args.rate, 10)
            idle_cpu = cpu_seconds(relay.process.pid) - idle_cpu
        finally:
            relay.stop()
        took = fill(url, args.queued, args.companies)
        print(f"{args.queued:,} updates queued in {took:.1f} s", file=sys.stderr)
        relay = RelayProcess(env, log_path)
        try:
            assert relay.process is not None
            pid = relay.process.pid
            time.sleep(5)  # the relay meets the outage: the breaker opens
            sim.clear_faults()
            cleared = time.time()
            up = time.monotonic()
            cpu_up = cpu_seconds(pid)
            done = threading.Event()

            def measure() -> None:
                while not done.is_set():
                    starts.append(time.monotonic() - up)
                    windows.append(paced_ingest(relay.url, args.rate, 5))

            load = threading.Thread(target=measure, daemon=True)
            load.start()
            drain: float | None = None
            last = 0.0
            while time.monotonic() - up < args.timeout:
                samples.append(rss_mb(pid)[0])
                if time.monotonic() - last >= 2:
                    last = time.monotonic()
                    left = pending(url)
                    print(f"  {last - up:6.1f} s: {left:,} left", file=sys.stderr)
                    if left == 0:
                        drain = last - up
                        break
                time.sleep(0.5)
            done.set()
            cpu = cpu_seconds(pid) - cpu_up
            served = server_latency(relay.url)
            drained = time.monotonic() - up
            load.join()
            peak = rss_mb(pid)[1]
            stats = sim.stats()
            seen = sim.companies()
        finally:
            relay.stop()

    want = expected(args.queued, args.companies)
    ok = sum(1 for c, values in want.items() if seen.get(c) == values)
    store = url.split(":", 1)[0]
    print(
        f"\nDrain after an outage ({store}): {args.queued:,} updates queued over "
        f"{args.companies:,} companies; scale {args.scale:g} (real time {rate:,}/min, bulk "
        f"{rows:,} rows/min); one run on this machine"
    )
    p99s = [p99(w) for w in windows]
    during = p99([latency for window in windows for latency in window])
    before = p99(baseline)
    print(
        f"ingest before (queue empty, Userpilot down), {args.rate:g} single updates a second: "
        f"p50 {statistics.median(baseline):.1f} ms, p99 {before:.1f} ms"
    )
    print(
        f"ingest during the drain: {len(windows)} windows of 5 s, p99 {during:.1f} ms (worst "
        f"window {max(p99s, default=math.nan):.1f} ms; {during / before:.1f} x before; target "
        f"<= {P99_TARGET:g} ms: {'met' if during <= P99_TARGET else 'NOT met'})"
    )
    print(
        "  p99 by window (s after Userpilot was back: ms): "
        + ", ".join(f"{at:.0f}: {p:.0f}" for at, p in zip(starts, p99s, strict=False))
    )
    total = served.get("+Inf", 0.0)
    print(
        f"  as the relay timed them: {total - served.get('0.05', 0.0):,.0f} of {total:,.0f} "
        f"over 50 ms, {total - served.get('1.0', 0.0):,.0f} over 1 s"
    )
    print(
        f"relay CPU (user + system): {idle_cpu / 10:.2f} s a second during the baseline, "
        f"{cpu / drained:.2f} s a second during the drain ({cpu:.1f} s in {drained:.0f} s)"
    )
    print(
        f"RSS: peak {max(samples, default=0):.0f} MB sampled, {peak:.0f} MB VmHWM "
        f"({peak / RSS_TARGET:.2f} of the {RSS_TARGET:g} MB target: "
        f"{'met' if peak <= RSS_TARGET else 'NOT met'})"
    )
    closed = breaker_closed(log_path, cleared)
    print(
        "circuit breaker: "
        + ("never closed" if closed is None else f"closed {closed:.1f} s after Userpilot was back")
    )
    if drain is None:
        print(f"drain: NOT done within {args.timeout:g} s")
    else:
        ratio = drain / minimum
        print(
            f"drain: {drain:.1f} s against a {minimum:.1f} s minimum ({args.companies:,} / "
            f"{(rate + rows) / 60:g} per s) = {ratio:.2f} (target <= {DRAIN_TARGET:g}: "
            f"{'met' if ratio <= DRAIN_TARGET else 'NOT met'})"
        )
    print(
        f"Userpilot: {stats['identify_calls']:,} calls, {stats['bulk_rows_received']:,} bulk "
        f"rows in {stats['jobs_created']} jobs, 429s {stats['throttled']}; companies with "
        f"their newest values: {ok:,} / {len(want):,}"
    )
    print(f"\nrelay log, {log_path}: warnings and errors")
    for (level, msg), count in sorted(log_summary(log_path).items(), key=lambda i: -i[1])[:8]:
        print(f"  {count:>7}  {level:8} {msg}")


if __name__ == "__main__":
    main()
