"""`userpilot-relay backfill hubspot|stripe`: start a backfill on a running relay and follow it.

`POST /backfills`, then `GET /backfills/{id}` every second, shown as a progress bar (pages,
companies, rate, ETA when the provider counts its records), then the final counts. Exits 0
when it completed, 1 when it failed (its error printed), 2 on a usage problem; `--no-wait`
prints the id and exits once the relay accepted it. The relay keeps running the backfill if
this command is interrupted.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app import __version__
from app.cli.output import console, markup, print_json, short, when
from app.cli.remote import DEFAULT_URL, TIMEOUT, AdminKeyOption, JsonOption, Relay, UrlOption
from app.cli.remote import error_message as relay_message

POLL = 1.0


class BackfillRelay(Relay):
    """The admin API, plus the one call with a JSON body this command needs."""

    def post_json(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {
            "User-Agent": f"userpilot-relay-cli/{__version__}",
            "Authorization": f"Bearer {self._key}",
        }
        try:
            response = httpx.post(self.url + path, json=body, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            self.fail(f"cannot reach the relay at {self.url}: {type(exc).__name__}")
        if response.status_code in (401, 403):
            self.fail(f"the relay at {self.url} refused the admin key: {relay_message(response)}")
        return response


def counts(backfill: dict[str, Any]) -> Table:
    """The final counts; every value the relay answered is shown as text (`markup`)."""
    grid = Table(title=f"backfill {markup(backfill.get('id'))}", show_header=False)
    grid.add_column("what", style="bold")
    grid.add_column("value", overflow="fold")
    for key in ("source", "mode", "status", "pages", "companies", "enqueued", "skipped"):
        grid.add_row(key, markup(backfill.get(key)))
    grid.add_row("unchanged", markup(backfill.get("unchanged")))
    grid.add_row("errors", markup(backfill.get("errors")))
    grid.add_row("started", when(backfill.get("started_at")))
    grid.add_row("finished", when(backfill.get("finished_at")))
    if backfill.get("last_error"):
        grid.add_row("last error", markup(short(str(backfill["last_error"]), 200)))
    return grid


def backfill(
    source: Annotated[str, typer.Argument(help="hubspot or stripe.")],
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Start it and exit; do not follow it.")
    ] = False,
    reconcile: Annotated[
        bool,
        typer.Option("--reconcile", help="Store only what differs from what was delivered."),
    ] = False,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Backfill every company of HubSpot or Stripe into Userpilot through the running relay."""
    relay = BackfillRelay("backfill", url, admin_key)
    if source not in ("hubspot", "stripe"):
        relay.fail(f"unknown source {short(source, 40)!r}: hubspot or stripe", code=2)
    body = {"source": source, "mode": "reconcile" if reconcile else "full"}
    answer = relay.post_json("/backfills", body)
    if answer.status_code != 202:
        relay.fail(f"POST /backfills: {answer.status_code} {relay_message(answer)}")
    backfill_id = str(answer.json().get("id"))
    if no_wait:
        if json_out:
            print_json({"id": backfill_id, "status": "running"})
        else:
            console().print(f"backfill {markup(backfill_id)} of {source} started")
        return
    final = follow(relay, backfill_id, quiet=json_out)
    if json_out:
        print_json(final)
    else:
        console().print(counts(final))
    if final.get("status") != "completed":
        relay.fail(f"the backfill {backfill_id} failed: {final.get('last_error') or 'no reason'}")


def follow(relay: Relay, backfill_id: str, *, quiet: bool) -> dict[str, Any]:
    """Poll the backfill until it ends, with a progress bar (unless `quiet`)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[pages]} pages"),
        TextColumn("{task.fields[rate]}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console(),
        disable=quiet,
        transient=False,
    )
    started = time.monotonic()
    with progress:
        # The description and the fields are read as markup: the relay's values as text.
        task = progress.add_task(markup(backfill_id), total=None, pages=0, rate="0")
        while True:
            current: dict[str, Any] = relay.json("GET", f"/backfills/{backfill_id}")
            read = int(current.get("companies") or 0)
            rate = read / max(time.monotonic() - started, 1e-3)
            total = current.get("total")
            progress.update(
                task,
                completed=read,
                total=max(int(total), read) if isinstance(total, int) else None,
                pages=markup(current.get("pages")),
                rate=f"{rate:,.0f}",
            )
            if current.get("status") != "running":
                return current
            time.sleep(POLL)
