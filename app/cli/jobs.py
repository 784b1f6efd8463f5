"""`userpilot-relay jobs abandon ID`, over the relay's admin API (`POST /jobs/{id}/abandon`).

The way out of a bulk job that never ends (an undocumented status, a job stuck at Userpilot):
the job is recorded `abandoned` under the admin key's name and its rows go out again as
real-time calls. Userpilot may still run it later (see docs/runbooks.md).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape

from app.cli.output import console, print_json, short
from app.cli.remote import DEFAULT_URL, AdminKeyOption, JsonOption, Relay, UrlOption
from app.domain.rules import printable

app = typer.Typer(name="jobs", help="Act on the relay's Userpilot bulk jobs.", no_args_is_help=True)


def abandon(
    job_id: Annotated[str, typer.Argument(help="The relay's job id (job_…).")],
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """End a waiting or running bulk job and send its rows again as real-time calls."""
    relay = Relay("jobs abandon", url, admin_key)
    job = relay.json("POST", f"/jobs/{quote(job_id, safe='')}/abandon")
    if json_out:
        print_json(job)
        return
    line = (
        f"abandoned {short(printable(job.get('id'), 64), 64)} "
        f"({job.get('rows')} rows sent again real-time) by "
        f"{short(printable(job.get('abandoned_by'), 100), 60)}"
    )
    console().print(escape(line))


app.command("abandon")(abandon)
