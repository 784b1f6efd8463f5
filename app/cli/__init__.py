"""The `userpilot-relay` command, for operators.

- `migrate`, `openapi`, `hash-key`: no running relay needed (`app.cli.local`).
- `status`, `dead-letters list|replay|purge`, `jobs abandon`, `backfill hubspot|stripe`,
  `erase ID...`, `erasures`: a
  running relay's admin API, found through `RELAY_URL` and `RELAY_ADMIN_KEY` or `--url` and
  `--admin-key` (`app.cli.remote`).

`python -m app.cli` runs the same command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from app.cli import backfill, dead_letters, erasures, jobs, local, status

cli = typer.Typer(
    name="userpilot-relay",
    help="Operate the userpilot-relay service.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback could show an admin key: plain tracebacks, no locals.
    pretty_exceptions_enable=False,
)
cli.command("migrate")(local.migrate)
cli.command("openapi")(local.openapi)
cli.command("hash-key")(local.hash_key)
cli.command("status")(status.status)
cli.command("backfill")(backfill.backfill)
cli.command("erase")(erasures.erase)
cli.command("erasures")(erasures.list_erasures)
cli.add_typer(dead_letters.app, name="dead-letters")
cli.add_typer(jobs.app, name="jobs")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (`argv`, else the process's arguments); answer the exit status."""
    try:
        cli(args=None if argv is None else list(argv), prog_name="userpilot-relay")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0
