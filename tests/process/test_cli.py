"""`userpilot-relay` as an operator runs it: a subprocess against a real relay process (SQLite)
and the shared Userpilot simulator. One relay serves the whole module; each test uses its own
company ids, so what one test leaves behind does not change what another asserts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console

from app.cli import backfill as backfill_cli
from app.cli import status as status_cli
from app.cli.output import fail, markup, plain
from app.main import create_app
from app.simulator.process import SimulatorProcess
from tests.relay import (
    ADMIN_KEY,
    INGEST_KEY,
    RELAY_KEYS,
    ROOT,
    UPSTREAM_KEY,
    RelayProcess,
    free_port,
    wait_until,
)

HASHED_ADMIN_KEY = "cli-hashed-admin-key-5e1f0a"
REJECTION = {
    "errors": [{"error": "bad", "error_code": "INVALID", "message": "plan is not allowed"}]
}

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process


def cli(
    *args: str, stdin: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli ARGS` with no relay setting but those given; stdin not a terminal."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        cwd=cwd or ROOT / "tests",
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def relay(
    simulator_process: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    """One relay for the module, with an extra admin key configured in its hashed form: the
    form `hash-key` prints."""
    hashed = cli("hash-key", stdin=HASHED_ADMIN_KEY + "\n")
    assert hashed.returncode == 0, hashed.stderr
    directory = tmp_path_factory.mktemp("cli")
    process = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": simulator_process.url,
            "RELAY_API_KEYS": f"{RELAY_KEYS},hashed:admin:{hashed.stdout.strip()}",
            "RELAY_DATABASE_URL": f"sqlite:///{directory / 'relay.db'}",
            "RELAY_RATE_LIMIT_PER_MINUTE": "1200",
            "RELAY_RETRY_BASE_SECONDS": "0.2",
            "RELAY_RETRY_MAX_SECONDS": "1",
            "RELAY_SHUTDOWN_GRACE_SECONDS": "2",
        },
        directory / "relay.log",
    )
    yield process
    process.stop()


@pytest.fixture
def sim(simulator_process: SimulatorProcess) -> SimulatorProcess:
    simulator_process.clear_faults()
    return simulator_process


def admin(relay: RelayProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, RELAY_URL=relay.url, RELAY_ADMIN_KEY=ADMIN_KEY, **env)


def dead_letter(relay: RelayProcess, sim: SimulatorProcess, company_id: str) -> str:
    """A delivery Userpilot rejected for good (400): its id."""
    sim.add_fault(action="status", status=400, company_id=company_id, body=REJECTION)
    r = relay.post_company(company_id, {"plan": "x"}, headers={"Prefer": "wait=10"})
    assert r.status_code == 502, r.text
    delivery_id: str = r.json()["id"]
    assert relay.delivery(delivery_id)["status"] == "dead"
    return delivery_id


def dead_ids(relay: RelayProcess, company_id: str) -> list[str]:
    r = relay.request(
        "GET", "/deliveries", key=ADMIN_KEY, params={"status": "dead", "company_id": company_id}
    )
    assert r.status_code == 200, r.text
    return [d["id"] for d in r.json()["items"]]


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- commands that need no relay ---------------------------------------------------------------


def test_hash_key_prints_the_form_relay_api_keys_takes(relay: RelayProcess) -> None:
    want = "sha256:" + hashlib.sha256(HASHED_ADMIN_KEY.encode()).hexdigest()
    for given in (HASHED_ADMIN_KEY, HASHED_ADMIN_KEY + "\n", HASHED_ADMIN_KEY + "\r\n"):
        done = cli("hash-key", stdin=given)
        assert (done.returncode, done.stdout, done.stderr) == (0, want + "\n", "")
    # The relay was configured with that output: the plain key is an admin key there.
    r = relay.request("GET", "/deliveries", key=HASHED_ADMIN_KEY, params={"status": "dead"})
    assert r.status_code == 200, r.text
    done = cli("status", "--json", RELAY_URL=relay.url, RELAY_ADMIN_KEY=HASHED_ADMIN_KEY)
    assert as_json(done)["store"] == "ok"


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "the key is empty"),
        ("\n", "the key is empty"),
        ("two-lines\n\n", "whitespace"),
        ("two\nlines", "control or non-ASCII"),
        (" padded-key", "whitespace"),
        ("clé-secrète", "non-ASCII"),
    ],
)
def test_hash_key_refuses_a_key_no_request_could_present(given: str, reason: str) -> None:
    done = cli("hash-key", stdin=given)
    assert done.returncode == 2
    assert done.stdout == ""
    assert reason in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if given.strip():
        assert given.strip() not in done.stderr


def test_openapi_prints_the_apps_document() -> None:
    done = cli("openapi")
    assert done.returncode == 0, done.stderr
    assert done.stdout == json.dumps(create_app().openapi(), indent=2) + "\n"


def test_migrate_says_what_it_applied(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = cli("migrate", "--database-url", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("SQLite schema migrated to version ")
    assert "(applied 1, " in first.stdout
    again = cli("migrate", cwd=tmp_path, RELAY_DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("SQLite schema at version ")


# --- status ---------------------------------------------------------------------------------


def test_status_reports_the_queue_dead_letters_store_upstream_and_pacing(
    relay: RelayProcess, sim: SimulatorProcess
) -> None:
    dead_letter(relay, sim, "status-dead")
    report = as_json(admin(relay, "status", "--json"))
    dead = relay.metric("userpilot_relay_dead_letters")
    assert report["dead_letters"] == report["queue"]["dead"] == dead >= 1
    assert report["store"] == "ok"
    assert report["relay"] == relay.url
    assert report["rate_limit_per_minute"] == 1200
    last = report["last_upstream"]
    assert last["status"] == 400
    assert last["company_id"] == "status-dead"
    assert "plan is not allowed" in last["error"]
    assert set(report["queue"]) == {"queued", "delivering", "dead", "oldest_queued_age_seconds"}

    # An update Userpilot keeps refusing with a 503 waits in the queue, retried.
    sim.add_fault(action="status", status=503, company_id="status-stuck", times=1000)
    stuck = relay.post_company("status-stuck", {"plan": "y"}).json()["id"]
    wait_until(lambda: relay.delivery(stuck)["attempts"] >= 1)
    report = as_json(admin(relay, "status", "--json"))
    queue = report["queue"]
    assert queue["queued"] + queue["delivering"] >= 1
    assert queue["oldest_queued_age_seconds"] is not None
    assert queue["oldest_queued_age_seconds"] >= 0

    table = admin(relay, "status")
    assert table.returncode == 0, table.stderr
    for label in ("queued", "delivering", "dead letters", "oldest queued", "store", "pacing"):
        assert label in table.stdout
    assert "1200 calls/min" in table.stdout
    assert ADMIN_KEY not in table.stdout + table.stderr
    sim.clear_faults()
    relay.wait_for(stuck, "delivered")


def test_flags_win_over_the_environment(relay: RelayProcess) -> None:
    done = cli(
        "status",
        "--json",
        "--url",
        relay.url,
        "--admin-key",
        ADMIN_KEY,
        RELAY_URL=f"http://127.0.0.1:{free_port()}",
        RELAY_ADMIN_KEY="not-the-key",
    )
    assert as_json(done)["store"] == "ok"


def test_an_unreachable_relay_is_one_line_without_the_key() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("status", RELAY_URL=url, RELAY_ADMIN_KEY=ADMIN_KEY)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"userpilot-relay status: cannot reach the relay at {url}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert ADMIN_KEY not in done.stderr
    listing = cli("dead-letters", "list", "--url", url, "--admin-key", ADMIN_KEY)
    assert listing.returncode == 1
    assert "cannot reach the relay" in listing.stderr
    assert ADMIN_KEY not in listing.stderr


def test_a_refused_or_missing_key_is_one_line_without_the_key(relay: RelayProcess) -> None:
    wrong = cli("status", RELAY_URL=relay.url, RELAY_ADMIN_KEY="wrong-key-0c9d")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"userpilot-relay status: the relay at {relay.url} refused the admin key: unknown relay key"
    )
    ingest = cli("dead-letters", "list", RELAY_URL=relay.url, RELAY_ADMIN_KEY=INGEST_KEY)
    assert ingest.returncode == 1
    assert "it is not an admin key" in ingest.stderr
    assert INGEST_KEY not in ingest.stderr
    missing = cli("status", RELAY_URL=relay.url)
    assert missing.returncode == 2
    assert "set RELAY_ADMIN_KEY or pass --admin-key" in missing.stderr
    # A badly quoted secret (a newline inside): refused before any request, never quoted.
    for mangled in ("top\nsecret-8e1f", "top secret-8e1f", "clé-secret-8e1f"):
        bad = cli("status", RELAY_URL=relay.url, RELAY_ADMIN_KEY=mangled)
        assert bad.returncode == 2, bad.stderr
        assert "secret-8e1f" not in bad.stderr + bad.stdout
        assert "no request could present it" in bad.stderr


# --- dead letters ----------------------------------------------------------------------------


def test_list_shows_each_dead_letter(relay: RelayProcess, sim: SimulatorProcess) -> None:
    ids = [dead_letter(relay, sim, "list-co") for _ in range(2)]
    rows = as_json(admin(relay, "dead-letters", "list", "--company", "list-co", "--json"))
    assert [r["id"] for r in rows] == ids
    for row in rows:
        assert row["company_id"] == "list-co"
        assert row["last_upstream_status"] == 400
        assert "plan is not allowed" in row["last_error"]
        assert row["dead_at"] >= row["created_at"] > 0
    limited = admin(relay, "dead-letters", "list", "--company", "list-co", "--limit=1", "--json")
    assert [r["id"] for r in as_json(limited)] == ids[:1]
    table = admin(relay, "dead-letters", "list", "--company", "list-co", "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert ids[0] in table.stdout and ids[1] not in table.stdout
    assert "raise it" in table.stderr
    none = admin(relay, "dead-letters", "list", "--company", "nobody-here")
    assert none.stdout == "no dead letters of company nobody-here\n"


def test_replay_and_purge_one_or_a_companys(relay: RelayProcess, sim: SimulatorProcess) -> None:
    first, second, third = (dead_letter(relay, sim, "act-co") for _ in range(3))
    other = dead_letter(relay, sim, "act-other")
    sim.clear_faults()

    done = admin(relay, "dead-letters", "replay", first, "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"replayed 1 dead letter: {first} is queued\n"
    relay.wait_for(first, "delivered")

    done = admin(relay, "dead-letters", "purge", second, "--yes")
    assert (done.returncode, done.stdout) == (0, f"purged 1 dead letter: {second}\n")
    assert relay.request("GET", f"/deliveries/{second}", key=ADMIN_KEY).status_code == 404
    assert dead_ids(relay, "act-co") == [third]

    done = admin(relay, "dead-letters", "replay", "--company", "act-other", "--yes")
    assert done.stdout == "replayed 1 dead letter of company act-other\n"
    relay.wait_for(other, "delivered")

    done = admin(relay, "dead-letters", "purge", "--company", "act-co", "-y")
    assert done.stdout == "purged 1 dead letter of company act-co\n"
    assert dead_ids(relay, "act-co") == []

    again = admin(relay, "dead-letters", "replay", first, "--yes")
    assert again.returncode == 1
    assert "is not dead" in again.stderr or "409" in again.stderr


def test_without_yes_and_without_a_terminal_nothing_is_done(
    relay: RelayProcess, sim: SimulatorProcess
) -> None:
    delivery_id = dead_letter(relay, sim, "ask-co")
    for action in ("replay", "purge"):
        for target in ([delivery_id], ["--company", "ask-co"], []):
            done = admin(relay, "dead-letters", action, *target)
            assert done.returncode == 2, (action, target, done.stdout, done.stderr)
            assert "--yes" in done.stderr
            assert "stdin is not a terminal" in done.stderr
    assert dead_ids(relay, "ask-co") == [delivery_id]
    both = admin(relay, "dead-letters", "purge", delivery_id, "--company", "ask-co", "--yes")
    assert both.returncode == 2
    assert dead_ids(relay, "ask-co") == [delivery_id]


def test_status_route_needs_an_admin_key(relay: RelayProcess) -> None:
    assert httpx.get(f"{relay.url}/status", timeout=10).status_code == 401
    assert relay.request("GET", "/status", key=INGEST_KEY).status_code == 403
    body = relay.request("GET", "/status", key=ADMIN_KEY).json()
    assert body["rate_limit_per_minute"] == 1200
    assert body["recent_window"] == 200


def test_on_a_terminal_it_asks_first(relay: RelayProcess, sim: SimulatorProcess) -> None:
    delivery_id = dead_letter(relay, sim, "tty-co")
    sim.clear_faults()

    def answer(text: str, *args: str) -> subprocess.CompletedProcess[str]:
        leader, follower = pty.openpty()
        try:
            os.write(leader, text.encode())
            env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
            return subprocess.run(
                [sys.executable, "-m", "app.cli", "dead-letters", *args],
                stdin=follower,
                env={**env, "RELAY_URL": relay.url, "RELAY_ADMIN_KEY": ADMIN_KEY},
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(follower)
            os.close(leader)

    no = answer("n\n", "purge", delivery_id)
    assert no.returncode == 1
    assert f"Purge dead letter {delivery_id} of company tty-co (400: " in no.stdout
    assert "not confirmed: nothing was done" in no.stderr
    assert dead_ids(relay, "tty-co") == [delivery_id]
    yes = answer("y\n", "replay", "--company", "tty-co")
    assert yes.returncode == 0, yes.stderr
    assert "Replay 1 dead letter of company tty-co (and any that die before this runs" in yes.stdout
    assert yes.stdout.endswith("replayed 1 dead letter of company tty-co\n")
    relay.wait_for(delivery_id, "delivered")


def test_status_shows_the_bulk_job_running(sim: SimulatorProcess, tmp_path: Path) -> None:
    sim.configure(bulk_rows_per_minute=0)  # the job stays running while we look
    process = RelayProcess(
        {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
            "RELAY_BULK_THRESHOLD": "50",
            "RELAY_BULK_POLL_SECONDS": "0.2",
        },
        tmp_path / "relay.log",
    )
    try:
        items = [{"company_id": f"cli-bulk-{i}", "metadata": {"n": i}} for i in range(200)]
        posted = httpx.post(
            f"{process.url}/companies/bulk",
            json={"companies": items},
            headers={"Authorization": f"Bearer {INGEST_KEY}"},
        )
        assert posted.status_code == 202, posted.text

        def running() -> dict[str, Any] | None:
            job = as_json(admin(process, "status", "--json"))["bulk_job"]
            return job if job and job["status"] == "running" else None

        job = wait_until(running, timeout=30, interval=0.3)
        assert job["rows"] > 0 and job["upstream_job_id"]
        table = admin(process, "status")
        assert table.returncode == 0, table.stderr
        assert "bulk jobs" in table.stdout and "running" in table.stdout
        assert f"of {job['rows']:,} rows" in table.stdout
    finally:
        sim.configure(bulk_rows_per_minute=1_000_000)
        process.stop()


# --- text from outside is shown, never acted on ----------------------------------------------

# Userpilot's error text with rich markup, a screen clear (CSI), a title change (OSC), an 8-bit
# CSI (C1) and a right-to-left override: each must reach the terminal as text.
HOSTILE = "[red]x[/red] \x1b[2J \x1b]0;title\x07 \x9b31m \u202egnp.exe"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
SHOWN = ("[red]x[/red]", "\\x1b[2J", "\\x1b]0;title\\x07", "\\x9b31m", "\\u202egnp.exe")


def rendered(renderable: Any) -> str:
    """What rich prints for `renderable`, with no styles of its own (so any ESC is the data's)."""
    buffer = io.StringIO()
    Console(file=buffer, width=300, color_system=None, force_terminal=False).print(renderable)
    return buffer.getvalue()


def test_userpilots_error_text_is_shown_as_text(relay: RelayProcess, sim: SimulatorProcess) -> None:
    company = "hostile-[bold]co"
    rejection = {"errors": [{"error": "bad", "error_code": "INVALID", "message": HOSTILE}]}
    sim.add_fault(action="status", status=400, company_id=company, body=rejection)
    r = relay.post_company(company, {"plan": "x"}, headers={"Prefer": "wait=10"})
    assert r.status_code == 502, r.text
    assert r.json()["last_error"] == f"INVALID: {HOSTILE}"  # kept as Userpilot sent it

    listed = admin(relay, "dead-letters", "list", "--company", company)
    status = admin(relay, "status")
    for done in (listed, status):
        assert done.returncode == 0, done.stderr
        for raw in RAW:
            assert raw not in done.stdout + done.stderr
        for shown in SHOWN:
            assert shown in done.stdout, (shown, done.stdout)
        assert company in done.stdout  # its markup shown too, not applied

    rows = as_json(admin(relay, "dead-letters", "list", "--company", company, "--json"))
    assert [row["last_error"] for row in rows] == [f"INVALID: {HOSTILE}"]  # the data intact
    report = admin(relay, "status", "--json")
    assert json.loads(report.stdout)["last_upstream"]["error"] == f"INVALID: {HOSTILE}"
    for done in (report, admin(relay, "dead-letters", "list", "--company", company, "--json")):
        for raw in RAW:
            assert raw not in done.stdout


def test_backfill_and_bulk_job_values_are_shown_as_text() -> None:
    final = {"id": f"bf-{HOSTILE}", "source": "hubspot", "mode": "full", "status": HOSTILE}
    final |= {"pages": HOSTILE, "companies": 3, "last_error": HOSTILE, "errors": HOSTILE}
    job = {"id": HOSTILE, "status": "running", "rows": 10, "completed_rows": 2}
    for text in (
        rendered(backfill_cli.counts(final)),
        rendered(status_cli.bulk_line(HOSTILE, job | {"last_error": HOSTILE})),
        rendered(markup(HOSTILE)),  # the progress bar's description and pages
    ):
        for raw in RAW:
            assert raw not in text
        assert "[red]x[/red]" in text and "\\x1b[2J" in text


def test_plain_escapes_every_terminal_control() -> None:
    assert plain("a\x1b[31mb\x00c\x7f\x85\u2066d\te\nf") == (
        "a\\x1b[31mb\\x00c\\x7f\\x85\\u2066d\\x09e\\x0af"
    )
    assert plain("Grüße, 東京 [b]") == "Grüße, 東京 [b]"  # text stays text
    assert markup("[red]x[/red]") == "\\[red]x\\[/red]"


def test_a_failure_quoting_the_relay_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        fail(f"userpilot-relay status: GET /status: 500 {HOSTILE}")
    err = capsys.readouterr().err
    assert not [raw for raw in RAW if raw in err]
    assert err.count("\n") == 1 and "\\x1b[2J" in err
