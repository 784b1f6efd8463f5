"""Ingest benchmark: durable `POST /companies` and bulk ingest, against the no-storage floor.

Starts a Userpilot simulator, the floor app (`bench.floor_app`: the same FastAPI app answering
202 without storing) and the real relay, drives each with wrk (32 connections) and with
10,000-company bulk bodies, and prints throughput, p50/p99 latency and ratios from this one run.

    .venv/bin/python -m bench.ingest [--duration 10] [--database-url URL] [--workers N]

Needs `wrk` (Debian: apt-get install wrk). The machine is shared: read the ratios, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from app.simulator.process import SimulatorProcess
from tests.relay import INGEST_KEY, RELAY_KEYS, ROOT, UPSTREAM_KEY, free_port

LUA = """
local n = 0
request = function()
  n = n + 1
  local body = '{"company_id":"c' .. (n %% 5000) .. '","metadata":{"plan":"pro","seats":' .. n ..
    ',"mrr":1234.5,"active":true,"churned":null}}'
  return wrk.format("POST", "/companies", {
    ["Authorization"] = "Bearer %s",
    ["Content-Type"] = "application/json"}, body)
end
"""


@dataclass
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def start(module: str, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        module,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(
        command,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{module} did not start")


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, duration: int, connections: int, lua: str = LUA) -> Figures:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua % INGEST_KEY)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            script.name,
            url + "/companies",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Figures(rps=rps, p50_ms=p50, p99_ms=p99, errors=int(bad.group(1)) if bad else 0)


def bulk(url: str, rounds: int) -> float:
    """Companies per second through POST /companies/bulk, 10,000 per request."""
    body = orjson.dumps(
        {
            "companies": [
                {
                    "company_id": f"b{i}",
                    "metadata": {
                        "plan": "pro",
                        "seats": i,
                        "mrr": 99.5,
                        "active": True,
                        "region": "emea",
                        "gone": None,
                    },
                }
                for i in range(10_000)
            ]
        }
    )
    headers = {"Authorization": f"Bearer {INGEST_KEY}", "Content-Type": "application/json"}
    timings = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/companies/bulk", content=body, headers=headers)  # warm-up
        for _ in range(rounds):
            started = time.perf_counter()
            r = client.post("/companies/bulk", content=body, headers=headers)
            timings.append(time.perf_counter() - started)
            assert r.status_code == 202, r.text
    return 10_000 / statistics.median(timings)


def measure(module: str, env: dict[str, str], args: argparse.Namespace) -> tuple[Figures, float]:
    process, url = start(module, env, args.workers)
    try:
        wrk(url, 2, args.connections)  # warm-up
        figures = wrk(url, args.duration, args.connections)
        return figures, bulk(url, args.bulk_rounds)
    finally:
        process.terminate()
        process.wait(30)


def measure_plain(
    env: dict[str, str], args: argparse.Namespace, module: str = "bench.plain_app:app"
) -> Figures:
    """Single updates only (no bulk rounds)."""
    process, url = start(module, env, args.workers)
    try:
        wrk(url, 2, args.connections)  # warm-up
        return wrk(url, args.duration, args.connections)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bulk-rounds", type=int, default=10)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--workers", type=int, default=1, help="relay processes (PostgreSQL)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")

    with SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim, tempfile.TemporaryDirectory() as tmp:
        env = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
            "RELAY_DATABASE_URL": args.database_url or f"sqlite:///{Path(tmp) / 'relay.db'}",
        }
        plain = measure_plain(env, args)
        floor, floor_bulk = measure("bench.floor_app:app", env, args)
        durable, durable_bulk = measure("app.main:app", env, args)
        logged = measure_plain(
            {**env, "RELAY_ACCESS_LOG": "true", "RELAY_DATABASE_URL": env["RELAY_DATABASE_URL"]},
            args,
            module="app.main:app",
        )

    store = (args.database_url or "sqlite").split(":", 1)[0]
    print(f"\nIngest, {args.connections} connections, {args.duration} s, one run on this machine")
    print(f"{'':34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, f in (
        ("plain FastAPI (one route, 202)", plain),
        ("relay, null store (202)", floor),
        (f"relay, durable ({store})", durable),
        ("  the same, access log on", logged),
    ):
        print(f"{name:34}{f.rps:>10.0f}{f.p50_ms:>9.2f}{f.p99_ms:>9.2f}{f.errors:>9}")
    print(f"durable / plain FastAPI: {durable.rps / plain.rps:.2f} (target >= 0.6, p99 <= 25 ms)")
    print(f"null store / plain FastAPI: {floor.rps / plain.rps:.2f}")
    print(f"durable / null store: {durable.rps / floor.rps:.2f}")
    print(f"access log on / off: {logged.rps / durable.rps:.2f}")
    print(f"\nBulk, 10,000 companies a request (median of {args.bulk_rounds})")
    print(f"floor:   {floor_bulk:>10,.0f} companies/s")
    print(f"durable: {durable_bulk:>10,.0f} companies/s (target >= 100,000)")
    print(f"durable / floor bulk: {durable_bulk / floor_bulk:.2f}")


if __name__ == "__main__":
    main()
