"""`userpilot-relay status`: a running relay's queue, store, Userpilot's last answer, pacing.

Two calls: `GET /status` (admin: the queue, the last answer, the pacing) and `GET /readyz`
(the store's health). Exits 1 when the store is unreachable, after printing what is known.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from app.cli.output import age, console, fail, markup, plural, print_json, short, when
from app.cli.remote import DEFAULT_URL, AdminKeyOption, JsonOption, Relay, UrlOption
from app.domain.rules import printable


def collect(relay: Relay) -> dict[str, Any]:
    """The report `--json` prints; the table shows the same."""
    answer = relay.call("GET", "/status", expect=(200, 404, 503))
    if answer.status_code == 404:
        relay.fail(f"the relay at {relay.url} has no GET /status (an older relay?)")
    status: dict[str, Any] | None = None
    if answer.status_code == 200:
        try:
            status = answer.json()
        except ValueError:
            status = None
        if not isinstance(status, dict) or not isinstance(status.get("queue"), dict):
            relay.fail(f"GET /status: the answer is not a relay's status (is {relay.url} a relay?)")
    ready = relay.call("GET", "/readyz", auth=False, expect=(200, 503))
    try:
        body = ready.json()
    except ValueError:
        body = None
    store = str(body.get("store") or "unreachable") if isinstance(body, dict) else "unreachable"
    if status is None:
        store = "unreachable"
    queue = status["queue"] if status else None
    return {
        "relay": relay.url,
        "version": status["version"] if status else None,
        "store": store,
        "queue": queue,
        "dead_letters": queue["dead"] if queue else None,
        "last_upstream": status["last_upstream"] if status else None,
        "last_upstream_window": status["recent_window"] if status else None,
        "rate_limit_per_minute": status["rate_limit_per_minute"] if status else None,
        "delivery_concurrency": status["delivery_concurrency"] if status else None,
        "upstream_bulk": status.get("upstream_bulk") if status else None,
        "bulk_job": status.get("bulk_job") if status else None,
        "paused_until": status.get("paused_until") if status else None,
        "pause_reason": status.get("pause_reason") if status else None,
    }


def table(report: dict[str, Any]) -> Table:
    """The report as a table; every value the relay answered is shown as text (`markup`)."""
    version = f" {markup(report['version'])}" if report["version"] else ""
    grid = Table(title=f"userpilot-relay{version} at {markup(report['relay'])}", show_header=False)
    grid.add_column("what", style="bold")
    grid.add_column("value", overflow="fold")
    queue = report["queue"]
    unknown = "unknown (store unreachable)"
    for name in ("queued", "delivering"):
        grid.add_row(name, markup(queue[name]) if queue else unknown)
    grid.add_row(
        "dead letters",
        (f"[red]{markup(queue['dead'])}[/red]" if queue["dead"] else "0") if queue else unknown,
    )
    grid.add_row("oldest queued", age(queue["oldest_queued_age_seconds"]) if queue else unknown)
    store = report["store"]
    grid.add_row("store (/readyz)", "ok" if store == "ok" else f"[red]{markup(store)}[/red]")
    last = report["last_upstream"]
    label = "last upstream answer"
    if report["last_upstream_window"]:
        label += f"\n(newest {markup(report['last_upstream_window'])} updates)"
    if last:
        status = "network error" if last["status"] is None else str(last["status"])
        line = f"{status} at {when(last['at'])} (company {last['company_id']})"
        grid.add_row(label, markup(line))
        grid.add_row("last upstream error", markup(short(last["error"], 80)))
    else:
        grid.add_row(label, "none recorded" if queue else unknown)
    rate, concurrency = report["rate_limit_per_minute"], report["delivery_concurrency"]
    pacing = (
        markup(f"{rate} calls/min, at most {plural(concurrency, 'call')} in flight")
        if rate
        else unknown
    )
    grid.add_row("pacing", pacing)
    paused = report.get("paused_until")
    if isinstance(paused, int | float):
        said = printable(str(report.get("pause_reason") or "429 from Userpilot"), 200)
        reason = markup(short(said, 80))
        grid.add_row("paused", f"[yellow]until {when(paused)}[/yellow]: {reason}")
    if report["upstream_bulk"] is not None:
        grid.add_row("bulk jobs", bulk_line(report["upstream_bulk"], report["bulk_job"]))
    return grid


def bulk_line(mode: str, job: dict[str, Any] | None) -> str:
    """`auto, job_… running: 1,200 of 7,500 rows`, and whether it is stuck."""
    if not isinstance(job, dict):
        return f"{markup(short(str(mode), 10))}, none running"

    def count(key: str) -> str:
        value = job.get(key)
        return f"{value:,}" if isinstance(value, int) else "?"

    line = markup(
        f"{short(str(mode), 10)}, {short(str(job.get('id')), 40)} "
        f"{short(str(job.get('status')), 20)}: {count('completed_rows')} of {count('rows')} rows"
    )
    if job.get("stuck") is True:
        line += " [red](stuck: no progress)[/red]"
    if job.get("last_error"):
        line += "\nlast error: " + markup(short(str(job["last_error"]), 80))
    return line


def status(
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Show a running relay's queue, store health, Userpilot's last answer and pacing."""
    relay = Relay("status", url, admin_key)
    report = collect(relay)
    if json_out:
        print_json(report)
    else:
        console().print(table(report))
    if report["store"] != "ok":
        fail("userpilot-relay status: the relay's store is unreachable")
