"""Data-quality benchmark: single-update durable ingest with a 50-property schema and the PII
guard on, against the same relay with neither, in one run (issue 12's target: 0.9 or better).

Each update carries 10 properties: strings (one a URL, one a date to convert), numbers (one a
numeric string to convert), a boolean and a null, so the schema converts and the guard looks at
every value. The two relays are measured in turns (A B B A ...) and the medians compared.

    .venv/bin/python -m bench.quality [--duration 10] [--rounds 2]

Needs `wrk` (Debian: apt-get install wrk). Read the ratio, not the absolute figures.

`--bulk` measures bulk ingest instead (issue 20: the target is >= 100,000 companies/s with the
defaults): 10,000 companies a request with string properties (`bench.ingest.bulk`'s body),
through a relay with the default settings (PII guard `reject`) and one with
RELAY_PII_POLICY=allow, in turns, and prints both medians and their ratio:

    .venv/bin/python -m bench.quality --bulk [--rounds 4] [--bulk-rounds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from app.simulator.process import SimulatorProcess
from bench.ingest import Figures, bulk, start, wrk
from tests.relay import RELAY_KEYS, UPSTREAM_KEY

LUA = """
local n = 0
request = function()
  n = n + 1
  local body = '{"company_id":"q' .. (n %% 5000) .. '","metadata":{"plan":"pro","seats":"' .. n ..
    '","mrr":1234.5,"active":true,"churned":null,"region":"emea","industry":"Software",' ..
    '"website":"https://acme' .. n .. '.example.com","renewal_date":"2026-12-01T10:00:00+02:00",' ..
    '"owner_team":"Customer Success EMEA"}}'
  return wrk.format("POST", "/companies", {
    ["Authorization"] = "Bearer %s",
    ["Content-Type"] = "application/json"}, body)
end
"""

DECLARED = {
    "plan": "string",
    "seats": "number",
    "mrr": "number",
    "active": "boolean",
    "churned": "date",
    "region": "string",
    "industry": "string",
    "website": "string",
    "renewal_date": "date",
    "owner_team": "string",
}


def schema() -> dict[str, object]:
    """The 10 properties sent, and 40 more declared (a realistic tracking plan)."""
    properties = {name: {"type": kind} for name, kind in DECLARED.items()}
    kinds = ("string", "number", "boolean", "date")
    for i in range(40):
        properties[f"extra_{i}"] = {"type": kinds[i % 4]}
    return {"properties": properties, "unknown_properties": "allow"}


def bulk_main(rounds: int, bulk_rounds: int) -> None:
    """Bulk companies/s with the default PII guard and with RELAY_PII_POLICY=allow."""
    with SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim, tempfile.TemporaryDirectory() as tmp:
        base = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
        }
        configs = {
            "defaults (PII guard reject)": {},
            "RELAY_PII_POLICY=allow": {"RELAY_PII_POLICY": "allow"},
        }
        runs: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(rounds):
            order = list(configs.items())
            if round_ % 2:
                order.reverse()
            for index, (name, extra) in enumerate(order):
                db = Path(tmp) / f"bulk-{round_}-{index}.db"
                env = {**base, **extra, "RELAY_DATABASE_URL": f"sqlite:///{db}"}
                process, url = start("app.main:app", env, 1)
                try:
                    runs[name].append(bulk(url, bulk_rounds))
                finally:
                    process.terminate()
                    process.wait(30)
    print(f"\nBulk, 10,000 companies a request, {rounds} relays x {bulk_rounds} requests each")
    medians = {name: statistics.median(figures) for name, figures in runs.items()}
    for name, rate in medians.items():
        each = ", ".join(f"{r:,.0f}" for r in runs[name])
        print(f"{name:32}{rate:>12,.0f} companies/s  ({each})")
    guarded, allowed = medians.values()
    print(f"defaults / allow: {guarded / allowed:.2f} (defaults target >= 100,000/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bulk", action="store_true", help="bulk ingest, guard on and off")
    parser.add_argument("--bulk-rounds", type=int, default=10)
    args = parser.parse_args()
    if args.bulk:
        bulk_main(max(args.rounds, 2), args.bulk_rounds)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")

    with SimulatorProcess(api_keys=[UPSTREAM_KEY]) as sim, tempfile.TemporaryDirectory() as tmp:
        schema_file = Path(tmp) / "schema.json"
        schema_file.write_text(json.dumps(schema()))
        base = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_ACCESS_LOG": "false",
        }
        configs = {
            "without (no schema, RELAY_PII_POLICY=allow)": {"RELAY_PII_POLICY": "allow"},
            "with (50-property schema, PII guard reject)": {
                "RELAY_PROPERTY_SCHEMA_FILE": str(schema_file),
                "RELAY_PII_POLICY": "reject",
            },
        }
        runs: dict[str, list[Figures]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            # A B, then B A: whatever drifts during the run (the machine, the simulator's
            # memory) falls on both alike.
            order = list(configs.items())
            if round_ % 2:
                order.reverse()
            for index, (name, extra) in enumerate(order):
                db = Path(tmp) / f"relay-{round_}-{index}.db"
                env = {**base, **extra, "RELAY_DATABASE_URL": f"sqlite:///{db}"}
                process, url = start("app.main:app", env, 1)
                try:
                    wrk(url, 2, args.connections, LUA)  # warm-up
                    runs[name].append(wrk(url, args.duration, args.connections, LUA))
                finally:
                    process.terminate()
                    process.wait(30)

    print(
        f"\nSingle-update ingest, {args.connections} connections, {args.rounds} x {args.duration} s"
    )
    print(f"{'':46}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    medians = {}
    for name, figures in runs.items():
        rps = statistics.median(f.rps for f in figures)
        medians[name] = rps
        p50 = statistics.median(f.p50_ms for f in figures)
        p99 = statistics.median(f.p99_ms for f in figures)
        errors = sum(f.errors for f in figures)
        print(f"{name:46}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}{errors:>9}")
    without, with_ = medians.values()
    print(f"with / without: {with_ / without:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
