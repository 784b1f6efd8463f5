"""Command line: `python -m app.simulator --port 8900 --api-key KEY`.

Prints `userpilot simulator listening on http://HOST:PORT` once it accepts connections (with
the real port when `--port 0`), so scripts and tests can wait for that line. SIGINT and SIGTERM
shut it down gracefully with exit status 0.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from types import FrameType

from app.simulator.config import (
    DEFAULT_BULK_PHASE_SECONDS,
    DEFAULT_BULK_REFRESH_SECONDS,
    DEFAULT_BULK_ROWS_PER_MINUTE,
    DEFAULT_DELETE_INTERVAL_SECONDS,
    DEFAULT_RATE_LIMIT_PER_MINUTE,
    SimulatorConfig,
)
from app.simulator.server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.simulator", description="Run a local Userpilot simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        required=True,
        metavar="KEY",
        help="an accepted API key (repeat for several environments)",
    )
    parser.add_argument("--rate-limit-per-minute", type=int, default=DEFAULT_RATE_LIMIT_PER_MINUTE)
    parser.add_argument("--success-status", type=int, choices=(200, 202), default=202)
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every identify"
    )
    parser.add_argument("--bulk-rows-per-minute", type=int, default=DEFAULT_BULK_ROWS_PER_MINUTE)
    parser.add_argument(
        "--bulk-phase-seconds",
        type=float,
        default=DEFAULT_BULK_PHASE_SECONDS,
        help="seconds a bulk job spends queued, and again validating",
    )
    parser.add_argument(
        "--bulk-refresh-seconds",
        type=float,
        default=DEFAULT_BULK_REFRESH_SECONDS,
        help="seconds a bulk job shows pending_refresh before completed",
    )
    parser.add_argument(
        "--bulk-success-status",
        type=int,
        choices=(200, 201, 202),
        default=202,
        help="status of an accepted bulk upload",
    )
    parser.add_argument(
        "--invalid-company-id",
        dest="invalid_company_ids",
        action="append",
        default=[],
        metavar="ID",
        help="a company Userpilot refuses (repeat for several)",
    )
    parser.add_argument(
        "--request-log-limit",
        type=int,
        default=100_000,
        help="how many recent requests /_sim/requests keeps",
    )
    parser.add_argument(
        "--delete-interval-seconds",
        type=float,
        default=DEFAULT_DELETE_INTERVAL_SECONDS,
        help="at most one DELETE /v1/companies per key in this many seconds",
    )
    parser.add_argument(
        "--delete-immediately",
        action="store_true",
        help="delete at once rather than at POST /_sim/run-deletions (the 02:00 UTC run)",
    )
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", default="warning")
    return parser


def _ignore(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it shut down on; landing here makes the exit status 0."""


def _announce(url: str) -> None:
    print(f"userpilot simulator listening on {url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = SimulatorConfig(
        api_keys=frozenset(args.api_keys),
        rate_limit_per_minute=args.rate_limit_per_minute,
        success_status=args.success_status,
        latency=args.latency,
        bulk_rows_per_minute=args.bulk_rows_per_minute,
        bulk_phase_seconds=args.bulk_phase_seconds,
        bulk_refresh_seconds=args.bulk_refresh_seconds,
        bulk_success_status=args.bulk_success_status,
        invalid_company_ids=list(args.invalid_company_ids),
        request_log_limit=args.request_log_limit,
        delete_interval_seconds=args.delete_interval_seconds,
        delete_immediately=args.delete_immediately,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore)
    serve(
        config,
        host=args.host,
        port=args.port,
        http=args.http,
        access_log=args.access_log,
        log_level=args.log_level,
        on_ready=_announce,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
