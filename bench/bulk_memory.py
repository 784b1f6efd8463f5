"""Memory of concurrent bulk ingest: the relay's peak RSS while several callers each send a
20 MB `POST /companies/bulk` (10,000 companies with 230 properties) at once.

Runs the real relay process twice in one run, with `RELAY_BULK_CONCURRENCY=1` (the default)
and with the bound lifted, and prints the peak resident memory (VmHWM) of each, the idle
baseline and the ratio. Use the bounded figure to size the Helm chart's memory limit.

    .venv/bin/python -m bench.bulk_memory [--callers 3]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

import httpx
import orjson

from tests.relay import INGEST_KEY, RELAY_KEYS, UPSTREAM_KEY, RelayProcess


def body(rows: int = 10_000, limit: int = 20 * 1024 * 1024) -> bytes:
    """As many short properties per company as fit under the bulk body limit (about 200)."""
    keys = 260
    while True:
        companies = [
            {"company_id": f"c{i}", "metadata": {f"p{k}": k for k in range(keys)}}
            for i in range(rows)
        ]
        encoded = orjson.dumps({"companies": companies})
        if len(encoded) <= limit:
            return encoded
        keys -= 10


def peak_rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(
    payload: bytes, callers: int, concurrency: int, folder: Path
) -> tuple[float, float, list[int]]:
    relay = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": "http://127.0.0.1:9",
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": f"sqlite:///{folder / f'relay-{concurrency}.db'}",
            "RELAY_BULK_CONCURRENCY": str(concurrency),
            "RELAY_BULK_QUEUE_SECONDS": "120",
            "RELAY_ACCESS_LOG": "false",
        },
        folder / f"relay-{concurrency}.log",
    )
    try:
        assert relay.process is not None
        idle, _ = peak_rss_mb(relay.process.pid)
        statuses: list[int] = []

        def send() -> None:
            r = httpx.post(
                f"{relay.url}/companies/bulk",
                content=payload,
                headers={
                    "Authorization": f"Bearer {INGEST_KEY}",
                    "Content-Type": "application/json",
                },
                timeout=300,
            )
            statuses.append(r.status_code)

        threads = [threading.Thread(target=send) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, peak = peak_rss_mb(relay.process.pid)
    finally:
        relay.stop()
    return idle, peak, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=3)
    args = parser.parse_args()
    payload = body()
    print(f"bulk body: {len(payload) / 2**20:.1f} MiB, {args.callers} callers at once")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bounded = measure(payload, args.callers, 1, folder)
        unbounded = measure(payload, args.callers, args.callers, folder)
    for name, (idle, peak, statuses) in (
        ("bounded (1 at a time)", bounded),
        (f"unbounded ({args.callers} at once)", unbounded),
    ):
        print(f"{name:28s} idle {idle:6.0f} MB  peak {peak:6.0f} MB  statuses {sorted(statuses)}")
    print(f"peak ratio bounded / unbounded: {bounded[1] / unbounded[1]:.2f}")


if __name__ == "__main__":
    main()
