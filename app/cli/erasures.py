"""`userpilot-relay erase ID...` and `userpilot-relay erasures`, over the relay's admin API.

`erase` asks the relay to forget companies, in Userpilot and in the relay (`POST /erasures`),
after a confirmation prompt showing how many; `--yes` skips it, and without a terminal to ask
on it refuses and does nothing. `erasures` lists the erasures and Userpilot's answer to each.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from app.cli.output import console, fail, markup, plain, plural, print_json, short, when
from app.cli.remote import DEFAULT_URL, AdminKeyOption, JsonOption, Relay, UrlOption

MAX_COMPANIES = 10_000  # the most one POST /erasures takes
MAX_REASON = 500
PAGE = 1000
STATUSES = ("running", "completed", "failed")


def _fail(command: str, message: str) -> NoReturn:
    fail(f"userpilot-relay {command}: {message}", code=2)


def _companies(count: int) -> str:
    return "1 company" if count == 1 else f"{count} companies"


def _read_ids(path: Path) -> list[str]:
    """One company id per line of `path` (surrounding blanks trimmed, blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        _fail("erase", f"--file {path}: not UTF-8 text")
    except OSError as exc:
        _fail("erase", f"--file {path}: cannot read it ({exc.strerror or type(exc).__name__})")
    return [line.strip() for line in text.splitlines() if line.strip()]


def company_ids(ids: list[str], file: Path | None) -> list[str]:
    """The ids of the arguments then of the file, each once, in that order; exits when there
    are none or too many, or one is blank."""
    given = list(ids) + ([] if file is None else _read_ids(file))
    if any(not company_id.strip() for company_id in given):
        _fail("erase", "a company id is empty")
    unique = list(dict.fromkeys(given))
    if not unique:
        _fail("erase", "no company ids: pass them as arguments or in --file (one per line)")
    if len(unique) > MAX_COMPANIES:
        _fail("erase", f"{len(unique)} companies: at most {MAX_COMPANIES} per erasure")
    return unique


def _question(ids: list[str], reason: str) -> str:
    shown = ", ".join(short(company_id, 40) for company_id in ids[:3])
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return plain(
        f"Erase {_companies(len(ids))} ({shown}{more}) from Userpilot and the relay, "
        f"for good, and drop their updates from now on? Reason: {short(reason, 80)}"
    )


def erase(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Company ids to erase.", show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A file of company ids, one per line.", show_default=False),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why (kept in the audit trail, 1-500 characters), e.g. a ticket number.",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")] = False,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Forget companies in Userpilot and in the relay, and suppress their future updates."""
    targets = company_ids(ids or [], file)
    why = (reason or "").strip()
    if not why:
        _fail("erase", "give --reason: why these companies are erased (for the audit trail)")
    if len(why) > MAX_REASON:
        _fail("erase", f"--reason is {len(why)} characters: at most {MAX_REASON}")
    if not yes and not sys.stdin.isatty():
        _fail(
            "erase",
            "not confirmed: stdin is not a terminal to ask on; pass --yes to erase without "
            "a prompt",
        )
    relay = Relay("erase", url, admin_key)
    if not yes and not typer.confirm(_question(targets, why), default=False):
        relay.fail("not confirmed: nothing was done")
    erasure = relay.json(
        "POST", "/erasures", body={"company_ids": targets, "reason": why}, expect=(202,)
    )
    if not isinstance(erasure, dict):
        relay.fail("POST /erasures: the answer is not an erasure (is RELAY_URL a relay?)")
    if json_out:
        print_json(erasure)
        return
    print(
        plain(f"erasure {erasure.get('id')} is {erasure.get('status')}: {_companies(len(targets))}")
    )


def _upstream(item: dict[str, Any]) -> dict[str, Any]:
    upstream = item.get("upstream")
    return upstream if isinstance(upstream, dict) else {}


def _row(item: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "reason", "requested_by", "companies", "erased")
    upstream = _upstream(item)
    return {
        **{key: item.get(key) for key in keys},
        "created_at": item.get("created_at"),
        "finished_at": item.get("finished_at"),
        "last_error": item.get("last_error"),
        "upstream": {
            key: upstream.get(key)
            for key in ("status", "request_id", "accepted_at", "scheduled_for")
        },
    }


def _time(value: object) -> str:
    return when(float(value)) if isinstance(value, int | float) else "-"


def _text(value: object, width: int = 40) -> str:
    return "-" if value is None else markup(short(str(value), width))


def list_erasures(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only erasures in this status: running, completed or failed.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 100,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """List erasures: status, reason, companies, times, and Userpilot's answer."""
    if status is not None and status not in STATUSES:
        fail(
            f"userpilot-relay erasures: --status {status}: use one of {', '.join(STATUSES)}",
            code=2,
        )
    relay = Relay("erasures", url, admin_key)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    more = False
    while len(items) < limit:
        params = {"limit": str(min(PAGE, limit - len(items)))}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        page = relay.json("GET", "/erasures", params=params)
        items.extend(item for item in page.get("items", []) if isinstance(item, dict))
        cursor = page.get("next_cursor")
        if not isinstance(cursor, str) or not cursor:
            break
    else:
        more = True
    if json_out:
        print_json([_row(item) for item in items])
    elif not items:
        print(plain("no erasures" + (f" {status}" if status else "")))
    else:
        grid = Table(title=plural(len(items), "erasure"))
        # Userpilot's answer as `status request-id`; when it accepted the delete is in --json.
        for column in ("id", "status", "companies", "created (UTC)", "finished (UTC)"):
            grid.add_column(column, overflow="fold" if column == "id" else "ellipsis", no_wrap=True)
        grid.add_column("Userpilot", overflow="fold")
        grid.add_column("scheduled (UTC)", no_wrap=True)
        grid.add_column("reason", overflow="ellipsis")
        for item in items:  # the relay's and Userpilot's text: shown, never acted on
            upstream = _upstream(item)
            answer = " ".join(
                _text(upstream.get(key), 64)
                for key in ("status", "request_id")
                if upstream.get(key) is not None
            )
            grid.add_row(
                _text(item.get("id"), 64),
                _text(item.get("status"), 20),
                f"{_text(item.get('erased'), 10)}/{_text(item.get('companies'), 10)}",
                _time(item.get("created_at")),
                _time(item.get("finished_at")),
                answer or "-",
                _time(upstream.get("scheduled_for")),
                _text(item.get("reason"), 60),
            )
        console().print(grid)
    if more:
        print(f"more erasures than --limit {limit}: raise it to see them", file=sys.stderr)
