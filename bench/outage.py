"""Outage benchmark: what a Userpilot outage costs in calls, and how fast the queue drains after.

The issue's figures: after a 90 s outage, 300 waiting companies took 118 s to drain against a
30 s minimum, and the outage itself cost 890 calls. Targets: drain within the real-time minimum
plus 5 s of recovery, and at most a quarter of the send slots spent while Userpilot is down.

Starts a Userpilot simulator and the relay at the default rate (600/min), the default
RELAY_RETRY_MAX_SECONDS (300) and RELAY_UPSTREAM_BULK=off (300 companies is below the bulk
threshold anyway). Then:

- the simulator answers every request 503 (a request fault): the outage starts;
- 300 single updates (`POST /companies`, 300 distinct companies) arrive over its first
  `--spread` seconds;
- after `--outage` seconds the fault is cleared (`DELETE /_sim/faults`): recovery;
- the run waits until every delivery is delivered.

It prints the calls Userpilot answered 503 during the outage against the send slots of the
outage (outage seconds x rate / 60), and the drain from recovery to the last delivery
(`delivered_at`) against the real-time minimum (companies / calls per second), with the targets.

    .venv/bin/python -m bench.outage [--outage 90] [--companies 300] [--spread 10] [--log-dir DIR]

The relay's log is kept in `--log-dir` (a new temporary folder by default, printed at the end).
"""

from __future__ import annotations

import argparse
import calendar
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from app.simulator.process import SimulatorProcess
from bench.bulk_drain import log_summary
from tests.relay import ADMIN_KEY, RELAY_KEYS, UPSTREAM_KEY, RelayProcess

RATE_PER_MINUTE = 600  # the relay's default, and Userpilot's limit
SLOT_TARGET = 0.25  # at most this share of the outage's send slots
RECOVERY_TARGET = 5.0  # seconds over the real-time minimum


def delivered(relay: RelayProcess) -> list[dict[str, Any]]:
    """Every delivered delivery (admin listing, page by page)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"status": "delivered", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        r = relay.request("GET", "/deliveries", key=ADMIN_KEY, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def breaker_lines(log_path: Path, since: float) -> list[str]:
    """The relay's circuit-breaker log lines, timed from `since` (unix time)."""
    out = []
    keys = ("looks down", "answers again", "brought waiting")
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or not any(k in str(entry.get("msg")) for k in keys):
            continue
        stamp: float = calendar.timegm(time.strptime(entry["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
        stamp += int(entry["ts"][20:23]) / 1000
        extra = {k: v for k, v in entry.items() if k in ("failures", "deliveries")}
        out.append(f"t={stamp - since:+7.2f} s  {entry['msg']}  {extra or ''}".rstrip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=90.0, help="seconds Userpilot is down")
    parser.add_argument("--companies", type=int, default=300)
    parser.add_argument(
        "--spread", type=float, default=10.0, help="the updates arrive over this many seconds"
    )
    parser.add_argument("--timeout", type=float, default=360.0, help="seconds to wait for drain")
    parser.add_argument("--log-dir", type=Path, help="where the relay log goes (default: temp)")
    args = parser.parse_args()
    if args.outage <= 0 or args.companies < 1 or not 0 <= args.spread <= args.outage:
        sys.exit("--outage > 0, --companies >= 1 and 0 <= --spread <= --outage, please")
    log_dir: Path = args.log_dir or Path(tempfile.mkdtemp(prefix="outage-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "relay.log"
    per_second = RATE_PER_MINUTE / 60
    sent = {
        f"outage-{i:04d}": {"plan": ("free", "pro")[i % 2], "seats": i + 1}
        for i in range(args.companies)
    }

    with (
        SimulatorProcess(api_keys=[UPSTREAM_KEY], rate_limit_per_minute=RATE_PER_MINUTE) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        relay = RelayProcess(
            {
                "USERPILOT_API_KEY": UPSTREAM_KEY,
                "USERPILOT_ENDPOINT": sim.url,
                "RELAY_API_KEYS": RELAY_KEYS,
                "RELAY_DATABASE_URL": f"sqlite:///{Path(tmp) / 'relay.db'}",
                "RELAY_ACCESS_LOG": "false",
                "RELAY_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
                "RELAY_UPSTREAM_BULK": "off",
            },
            log_path,
        )
        try:
            sim.add_fault(action="status", status=503, times=10_000_000)
            down = time.time()
            print(f"outage: {args.outage:g} s, {args.companies} updates", file=sys.stderr)
            ids: list[str] = []
            for n, (company_id, metadata) in enumerate(sent.items()):
                due = down + args.spread * n / args.companies
                time.sleep(max(0.0, due - time.time()))
                r = relay.post_company(company_id, metadata)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            time.sleep(max(0.0, down + args.outage - time.time()))
            at_recovery = sim.stats()
            sim.clear_faults()
            up = time.time()
            outage = up - down
            print("recovery: fault cleared", file=sys.stderr)
            done: list[dict[str, Any]] = []
            while time.time() - up < args.timeout:
                done = delivered(relay)
                if len(done) >= len(ids):
                    break
                time.sleep(0.25)
            stats = sim.stats()
            seen = sim.companies()
            requests = sim.requests("/v1/companies/identify")
            queued = relay.request(
                "GET", "/deliveries", key=ADMIN_KEY, params={"status": "queued", "limit": 1000}
            ).json()["items"]
            dead = relay.request(
                "GET", "/deliveries", key=ADMIN_KEY, params={"status": "dead", "limit": 1000}
            ).json()["items"]
        finally:
            relay.stop()

    failed_calls = sum(1 for r in requests if r["status"] == 503)
    outage_calls = at_recovery["identify_calls"]
    slots = outage * per_second
    minimum = len(ids) / per_second
    finished = [d["delivered_at"] for d in done if d["delivered_at"] is not None]
    after = stats["identify_calls"] - outage_calls
    ok = sum(1 for c, m in sent.items() if seen.get(c) == m)

    print(
        f"\nOutage recovery, {len(ids)} companies, relay at {RATE_PER_MINUTE}/min, "
        f"RELAY_RETRY_MAX_SECONDS 300, bulk off; one run on this machine"
    )
    print(
        f"outage: {outage:.1f} s, updates sent over its first {args.spread:g} s "
        f"({args.companies / args.spread if args.spread else float('inf'):.0f}/s)"
    )
    fraction = outage_calls / slots
    print(
        f"calls during the outage: {outage_calls} ({failed_calls} answered 503 in all) of "
        f"{slots:.0f} send slots = {fraction:.3f} "
        f"(target <= {SLOT_TARGET}: {'met' if fraction <= SLOT_TARGET else 'NOT met'})"
    )
    if len(finished) >= len(ids):
        drain = max(finished) - up
        first = min(t for t in finished) - up
        verdict = "met" if drain <= minimum + RECOVERY_TARGET else "NOT met"
        print(
            f"drain after recovery: {drain:.1f} s against a {minimum:.1f} s minimum "
            f"= minimum + {drain - minimum:.1f} s "
            f"(target <= minimum + {RECOVERY_TARGET:g} s: {verdict}); first delivery "
            f"{first:.2f} s after recovery"
        )
    else:
        print(
            f"drain after recovery: NOT done in {args.timeout:g} s: {len(finished)} delivered, "
            f"{len(queued)} queued, {len(dead)} dead"
        )
    print(
        f"calls after recovery: {after} for {len(ids)} companies; 429s: {stats['throttled']}; "
        f"dead: {len(dead)}; metadata OK: {ok}/{len(sent)}; "
        f"max calls in any 1 s: {stats['max_in_any_1s_window']}, "
        f"in any 60 s: {stats['max_in_any_60s_window']}"
    )
    print(f"\nrelay log, {log_path}: circuit breaker (t from the outage's start)")
    print(f"  recovery at t={up - down:+7.2f} s")
    for line in breaker_lines(log_path, down):
        print(f"  {line}")
    print("warnings and errors:")
    lines = sorted(log_summary(log_path).items(), key=lambda item: -item[1])
    for (level, msg), count in lines[:12]:
        print(f"  {count:>7}  {level:8} {msg}")


if __name__ == "__main__":
    main()
