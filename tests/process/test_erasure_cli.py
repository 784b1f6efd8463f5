"""`userpilot-relay erase` and `userpilot-relay erasures`, run as an operator runs them, against
a stand-in relay answering the erasure routes' contract (the routes themselves come with the
erasure work): what the command sends, what it prints, and what it refuses."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.relay import ROOT

ADMIN = "erase-admin-key-7c2e91"
HOSTILE = "\x1b]8;;http://evil\x07click\x1b]8;;\x07 [red]boom[/red]"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    """What the stand-in relay received, and the erasures it lists."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    page: int = 2


def _erasure(number: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"er_{number:04d}",
        "status": "completed",
        "reason": f"ticket {number}",
        "requested_by": "ops",
        "companies": 2,
        "erased": 2,
        "created_at": 1_700_000_000 + number,
        "finished_at": 1_700_000_100 + number,
        "last_error": None,
        "upstream": {
            "status": 202,
            "request_id": f"req-{number}",
            "accepted_at": 1_700_000_050 + number,
            "scheduled_for": 1_700_013_600,
        },
        **changes,
    }


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Seen:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            seen = Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            state.seen.append(seen)
            return seen

        def _authorized(self, seen: Seen) -> bool:
            if seen.headers.get("authorization") != f"Bearer {ADMIN}":
                self._answer(401, {"message": "unknown key"})
                return False
            return True

        def do_POST(self) -> None:
            seen = self._record()
            if not self._authorized(seen):
                return
            body = seen.body
            reason = body.get("reason") if isinstance(body, dict) else None
            ids = body.get("company_ids") if isinstance(body, dict) else None
            if seen.path != "/erasures" or not isinstance(ids, list) or not reason:
                self._answer(422, {"message": "company_ids: field required"})
                return
            self._answer(
                202,
                {
                    "id": "er_new\x1b[2J",
                    "status": "running",
                    "companies": len(ids),
                    "reason": reason,
                    "created_at": 1_700_000_000,
                },
            )

        def do_GET(self) -> None:
            seen = self._record()
            if not self._authorized(seen):
                return
            wanted = seen.query.get("status", [None])[0]
            items = [i for i in state.items if wanted is None or i["status"] == wanted]
            start = int(seen.query.get("cursor", ["0"])[0])
            limit = min(int(seen.query.get("limit", ["100"])[0]), state.page)
            end = start + limit
            self._answer(
                200,
                {"items": items[start:end], "next_cursor": str(end) if end < len(items) else None},
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def cli(
    stand_in: StandIn, *args: str, terminal_answer: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli ARGS` against the stand-in; stdin a terminal answering
    `terminal_answer`, or no terminal at all."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "RELAY_URL": stand_in.url,
        "RELAY_ADMIN_KEY": ADMIN,
    }
    command = [sys.executable, "-m", "app.cli", *args]
    if terminal_answer is None:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd or ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    leader, follower = pty.openpty()
    try:
        os.write(leader, terminal_answer.encode())
        return subprocess.run(
            command,
            stdin=follower,
            env=env,
            cwd=cwd or ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(follower)
        os.close(leader)


# erase


def test_erase_with_yes_posts_the_ids_and_reason_and_prints_id_and_status(
    stand_in: StandIn, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("from-file-1\n\n  from-file-2  \nacme\n", encoding="utf-8")
    done = cli(
        stand_in, "erase", "acme", "ünï/cödé", "--file", str(ids_file), "--reason", "GDPR-42",
        "--yes",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (seen,) = stand_in.seen
    assert (seen.method, seen.path) == ("POST", "/erasures")
    assert seen.headers["authorization"] == f"Bearer {ADMIN}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {
        "company_ids": ["acme", "ünï/cödé", "from-file-1", "from-file-2"],
        "reason": "GDPR-42",
    }
    # The relay's id is shown as text: its escape sequence is printed, never acted on.
    assert done.stdout == "erasure er_new\\x1b[2J is running: 4 companies\n"
    assert ADMIN not in done.stdout + done.stderr


def test_erase_json_prints_the_relays_answer(stand_in: StandIn) -> None:
    done = cli(stand_in, "erase", "acme", "--reason", "r", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["status"], answer["companies"]) == ("running", 1)


def test_erase_without_yes_and_without_a_terminal_does_nothing(stand_in: StandIn) -> None:
    done = cli(stand_in, "erase", "acme", "--reason", "GDPR-42")
    assert done.returncode == 2
    assert "stdin is not a terminal" in done.stderr
    assert "--yes" in done.stderr
    assert stand_in.seen == []


def test_erase_on_a_terminal_asks_with_the_count_first(stand_in: StandIn) -> None:
    no = cli(stand_in, "erase", "a", "b", "c", "d", "--reason", "GDPR-42", terminal_answer="n\n")
    assert no.returncode == 1
    assert "Erase 4 companies (a, b, c and 1 more) from Userpilot and the relay" in no.stdout
    assert "Reason: GDPR-42" in no.stdout
    assert "not confirmed: nothing was done" in no.stderr
    assert stand_in.seen == []
    yes = cli(stand_in, "erase", "a", "--reason", "GDPR-42", terminal_answer="y\n")
    assert yes.returncode == 0, yes.stderr
    assert "Erase 1 company (a)" in yes.stdout
    assert yes.stdout.endswith("erasure er_new\\x1b[2J is running: 1 company\n")
    assert [s.body["company_ids"] for s in stand_in.seen] == [["a"]]


def test_a_hostile_id_in_the_prompt_is_shown_as_text(stand_in: StandIn) -> None:
    done = cli(stand_in, "erase", "evil\x1b[2Jid", "--reason", "r", terminal_answer="n\n")
    assert done.returncode == 1
    assert "evil\\x1b[2Jid" in done.stdout
    assert "\x1b[2J" not in done.stdout


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--reason", "r", "--yes"], "no company ids"),
        (["acme", "--yes"], "give --reason"),
        (["acme", "--reason", "   ", "--yes"], "give --reason"),
        (["acme", "--reason", "x" * 501, "--yes"], "at most 500"),
        (["", "--reason", "r", "--yes"], "a company id is empty"),
        (["--file", "missing.txt", "--reason", "r", "--yes"], "cannot read it"),
    ],
)
def test_erase_refuses_bad_input_and_sends_nothing(
    stand_in: StandIn, args: list[str], problem: str
) -> None:
    done = cli(stand_in, "erase", *args)
    assert done.returncode == 2, done.stdout
    assert problem in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert stand_in.seen == []


def test_erase_refuses_more_than_10000_companies(stand_in: StandIn, tmp_path: Path) -> None:
    ids_file = tmp_path / "many.txt"
    ids_file.write_text("".join(f"c{n}\n" for n in range(10_001)), encoding="utf-8")
    done = cli(stand_in, "erase", "--file", str(ids_file), "--reason", "r", "--yes")
    assert done.returncode == 2
    assert "10001 companies: at most 10000 per erasure" in done.stderr
    assert stand_in.seen == []


def test_erase_with_a_refused_key_is_one_line_without_the_key(stand_in: StandIn) -> None:
    env_key = "wrong-key-3f9a"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "erase", "acme", "--reason", "r", "--yes"],
        stdin=subprocess.DEVNULL,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "RELAY_URL": stand_in.url,
            "RELAY_ADMIN_KEY": env_key,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "refused the admin key" in done.stderr
    assert env_key not in done.stdout + done.stderr


# erasures


def test_erasures_lists_every_page_with_userpilots_answer(stand_in: StandIn) -> None:
    stand_in.items = [_erasure(n) for n in range(1, 4)] + [
        _erasure(4, status="running", finished_at=None, reason=HOSTILE, upstream=None)
    ]
    done = cli(stand_in, "erasures")
    assert done.returncode == 0, done.stderr
    assert [s.query.get("cursor") for s in stand_in.seen] == [None, ["2"]]
    assert "4 erasures" in done.stdout
    for number in range(1, 4):
        assert f"er_{number:04d}" in done.stdout
        assert f"req-{number}" in done.stdout
    assert "2023-11-14 22:13:21Z" in done.stdout  # er_0001 created
    assert "2023-11-15 02:00:00Z" in done.stdout  # scheduled for the 02:00 UTC run
    assert "\x1b]8" not in done.stdout and "\x07" not in done.stdout
    assert "\\x1b]8;;http://evil\\x07click" in done.stdout
    assert "[red]boom" in done.stdout  # not read as rich markup


def test_erasures_status_filter_and_json(stand_in: StandIn) -> None:
    stand_in.items = [_erasure(1), _erasure(2, status="failed", last_error="400: bad")]
    done = cli(stand_in, "erasures", "--status", "failed", "--json")
    assert done.returncode == 0, done.stderr
    assert stand_in.seen[0].query["status"] == ["failed"]
    (row,) = json.loads(done.stdout)
    assert row["id"] == "er_0002"
    assert row["last_error"] == "400: bad"
    assert row["upstream"] == {
        "status": 202,
        "request_id": "req-2",
        "accepted_at": 1_700_000_052,
        "scheduled_for": 1_700_013_600,
    }
    assert set(row) >= {"status", "reason", "companies", "erased", "created_at", "finished_at"}


def test_erasures_refuses_an_unknown_status(stand_in: StandIn) -> None:
    done = cli(stand_in, "erasures", "--status", "done")
    assert done.returncode == 2
    assert "running, completed, failed" in done.stderr
    assert stand_in.seen == []


def test_erasures_none(stand_in: StandIn) -> None:
    done = cli(stand_in, "erasures", "--status", "running")
    assert (done.returncode, done.stdout) == (0, "no erasures running\n")
