"""`userpilot-relay dead-letters list|replay|purge`, over the relay's admin API.

`replay` and `purge` act on one dead letter (its id), one company's (`--company`) or all of
them, after a confirmation prompt; `--yes` skips it, and without a terminal to ask on they
refuse rather than wait for an answer that cannot come.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from app.cli.output import console, fail, markup, plain, plural, print_json, short, when
from app.cli.remote import DEFAULT_URL, AdminKeyOption, JsonOption, Relay, UrlOption

app = typer.Typer(
    name="dead-letters",
    help="List, replay or purge the updates Userpilot permanently rejected.",
    no_args_is_help=True,
)

PAGE = 1000  # the most GET /deliveries answers at once

CompanyOption = Annotated[
    str | None,
    typer.Option("--company", help="Only this company's dead letters.", show_default=False),
]
IdArgument = Annotated[
    str | None,
    typer.Argument(
        help="One dead letter's delivery id (default: every dead letter).", show_default=False
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]


def dead_letters(relay: Relay, company: str | None, limit: int) -> tuple[list[Any], bool]:
    """Up to `limit` dead letters, oldest first, and whether there are more."""
    items: list[Any] = []
    cursor: str | None = None
    while len(items) < limit:
        params = {"status": "dead", "limit": str(min(PAGE, limit - len(items)))}
        if company is not None:
            params["company_id"] = company
        if cursor is not None:
            params["cursor"] = cursor
        page = relay.json("GET", "/deliveries", params=params)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items, False
    return items, True


def _row(item: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "company_id", "last_upstream_status", "last_error", "attempts")
    return {
        **{k: item[k] for k in keys},
        "last_request_id": item["last_request_id"],
        "created_at": item["created_at"],
        "dead_at": item["updated_at"],
    }


@app.command("list")
def list_dead(
    company: CompanyOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 100,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """List dead letters, oldest first: id, company, Userpilot's status and error, time."""
    relay = Relay("dead-letters list", url, admin_key)
    items, more = dead_letters(relay, company, limit)
    if json_out:
        print_json([_row(item) for item in items])
    elif not items:
        print(plain("no dead letters" + (f" of company {company}" if company else "")))
    else:
        grid = Table(title=plural(len(items), "dead letter"))
        for column in ("id", "company", "status", "error", "dead since (UTC)"):
            grid.add_column(column, overflow="fold" if column == "id" else "ellipsis")
        for item in items:
            status = item["last_upstream_status"]
            grid.add_row(  # the relay's and Userpilot's text: shown, never acted on
                markup(item["id"]),
                markup(item["company_id"]),
                "-" if status is None else markup(status),
                markup(short(item["last_error"])),
                when(item["updated_at"]),
            )
        console().print(grid)
    if more:
        print(f"more dead letters than --limit {limit}: raise it to see them", file=sys.stderr)


def _refuse_without_terminal(command: str, verb: str, yes: bool) -> None:
    """Before any call: without --yes a prompt needs a terminal to answer it."""
    if not yes and not sys.stdin.isatty():
        fail(
            f"userpilot-relay {command}: not confirmed: stdin is not a terminal to ask on; "
            f"pass --yes to {verb} without a prompt",
            code=2,
        )


def _target(
    relay: Relay, delivery_id: str | None, company: str | None, verb: str, yes: bool
) -> None:
    """Ask before acting, naming what would be acted on (nothing to act on: exit 0)."""
    if yes:
        return
    if delivery_id is not None:
        delivery = relay.json("GET", f"/deliveries/{quote(delivery_id, safe='')}")
        if delivery["status"] != "dead":
            relay.fail(f"{delivery_id} is {delivery['status']}, not dead: nothing to {verb}")
        status = delivery["last_upstream_status"]
        question = plain(
            f"{verb.capitalize()} dead letter {delivery_id} of company "
            f"{delivery['company_id']} ({status}: {short(delivery['last_error'], 50)})?"
        )
    else:
        items, more = dead_letters(relay, company, PAGE)
        whose = f" of company {company}" if company else ""
        if not items:
            print(plain(f"no dead letters{whose} to {verb}"))
            raise typer.Exit(0)
        count = f"{PAGE} or more" if more else str(len(items))
        question = plain(
            f"{verb.capitalize()} {count} dead letter{'s' if count != '1' else ''}{whose} "
            "(and any that die before this runs: it acts on every one there is then)?"
        )
    if not typer.confirm(question, default=False):
        relay.fail("not confirmed: nothing was done")


def _one_of(command: str, delivery_id: str | None, company: str | None) -> None:
    if delivery_id is not None and company is not None:
        fail(f"userpilot-relay {command}: give a delivery id or --company, not both", code=2)


def _confirmed(
    verb: str,
    delivery_id: str | None,
    company: str | None,
    yes: bool,
    url: str,
    admin_key: str | None,
) -> Relay:
    """The relay to act on, once the arguments hold and the operator said yes (or `--yes`)."""
    command = f"dead-letters {verb}"
    _one_of(command, delivery_id, company)
    _refuse_without_terminal(command, verb, yes)
    relay = Relay(command, url, admin_key)
    _target(relay, delivery_id, company, verb, yes)
    return relay


@app.command("replay")
def replay(
    delivery_id: IdArgument = None,
    company: CompanyOption = None,
    yes: YesOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Put dead letters back in the queue: one (its id), one company's, or all."""
    relay = _confirmed("replay", delivery_id, company, yes, url, admin_key)
    if delivery_id is not None:
        path = f"/deliveries/{quote(delivery_id, safe='')}/replay"
        delivery = relay.json("POST", path)
        print(plain(f"replayed 1 dead letter: {delivery['id']} is {delivery['status']}"))
        return
    params = {} if company is None else {"company_id": company}
    count = int(relay.json("POST", "/deliveries/replay", params=params)["replayed"])
    whose = f" of company {company}" if company else ""
    print(plain(f"replayed {plural(count, 'dead letter')}{whose}"))


@app.command("purge")
def purge(
    delivery_id: IdArgument = None,
    company: CompanyOption = None,
    yes: YesOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Delete dead letters for good: one (its id), one company's, or all."""
    relay = _confirmed("purge", delivery_id, company, yes, url, admin_key)
    if delivery_id is not None:
        count = int(relay.json("DELETE", f"/deliveries/{quote(delivery_id, safe='')}")["purged"])
        print(plain(f"purged {plural(count, 'dead letter')}: {delivery_id}"))
        return
    params = {"status": "dead"} if company is None else {"status": "dead", "company_id": company}
    count = int(relay.json("DELETE", "/deliveries", params=params)["purged"])
    whose = f" of company {company}" if company else ""
    print(plain(f"purged {plural(count, 'dead letter')}{whose}"))
