"""`Prefer: wait` latency: `POST /companies` waiting for Userpilot's answer, against calling the
same Userpilot stand-in directly, in one run (issue 11: p50 at most 5 ms above the direct call
when the company has nothing in flight and a send slot is free).

Requests go one at a time, each for a new company, spaced past the send interval (100 ms at
the default 600 a minute) so a slot is always free; the direct calls go the same way. Then ten
concurrent waiting changes of one company, counting the calls Userpilot received (at most 2).

    .venv/bin/python -m bench.wait [--requests 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from app.simulator.process import SimulatorProcess
from bench.ingest import start
from tests.relay import INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY

SPACING = 0.15  # seconds between requests: past the 100 ms send interval


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def direct(sim: SimulatorProcess, count: int) -> list[float]:
    timings = []
    headers = {"Authorization": f"Token {UPSTREAM_KEY}"}
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        for i in range(count):
            body = {"company_id": f"direct-{i}", "metadata": {"plan": "pro", "seats": i}}
            started = time.perf_counter()
            r = client.post("/v1/companies/identify", json=body, headers=headers)
            timings.append((time.perf_counter() - started) * 1000)
            assert r.is_success, r.text
            time.sleep(SPACING)
    return timings


def waited(url: str, count: int, prefix: str) -> list[float]:
    timings = []
    headers = {"Authorization": f"Bearer {INGEST_KEY}", "Prefer": "wait=10"}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(count):
            body = {"company_id": f"{prefix}-{i}", "metadata": {"plan": "pro", "seats": i}}
            started = time.perf_counter()
            r = client.post("/companies", json=body, headers=headers)
            timings.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
            time.sleep(SPACING)
    return timings


def burst(url: str, sim: SimulatorProcess) -> tuple[int, list[int]]:
    """Ten concurrent waiting changes of one company: Userpilot's calls for it, the statuses."""
    statuses: list[int] = []
    headers = {"Authorization": f"Bearer {INGEST_KEY}", "Prefer": "wait=10"}

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"company_id": "burst", "metadata": {"seats": i}}
            statuses.append(client.post("/companies", json=body, headers=headers).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = [r for r in sim.requests("/v1/companies/identify") if "burst" in str(r)]
    return len(calls), statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()
    with SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim, tempfile.TemporaryDirectory() as tmp:
        env = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_DATABASE_URL": args.database_url or f"sqlite:///{Path(tmp) / 'relay.db'}",
        }
        process, url = start("app.main:app", env, 1)
        try:
            waited(url, 20, "warm")  # warm-up, both
            direct(sim, 20)
            relay_ms: list[float] = []
            direct_ms: list[float] = []
            for block in range(10):  # in turns, so that drift falls on both alike
                relay_ms += waited(url, args.requests // 10, f"wait{block}")
                direct_ms += direct(sim, args.requests // 10)
            calls, statuses = burst(url, sim)
        finally:
            process.terminate()
            process.wait(30)

    store = (args.database_url or "sqlite").split(":", 1)[0]
    print(f"\n`Prefer: wait` ({store}), {args.requests} requests one at a time, slot free")
    print(f"{'':32}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, values in (
        ("direct call to the simulator", direct_ms),
        ("relay, Prefer: wait", relay_ms),
    ):
        print(
            f"{name:32}{statistics.median(values):>9.2f}{percentile(values, 0.9):>9.2f}"
            f"{percentile(values, 0.99):>9.2f}"
        )
    gap = statistics.median(relay_ms) - statistics.median(direct_ms)
    print(f"p50 above the direct call: {gap:.2f} ms (target <= 5)")
    print(f"ten concurrent waiting changes of one company: {calls} calls (<= 2), {statuses}")


if __name__ == "__main__":
    main()
