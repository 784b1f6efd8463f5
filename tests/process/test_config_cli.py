"""One settings path: the service and `userpilot-relay` read the same settings (the environment,
then `.env` in the working directory); RELAY_LOG_LEVEL from `.env` is honoured; logging is
configured once, from the settings, by whoever starts the app."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import app.main
from app.config import ConfigError, Settings, load_settings, load_store_settings
from app.logs import JsonFormatter
from tests.inprocess import InProcessRelay, run
from tests.relay import RELAY_KEYS, ROOT, UPSTREAM_KEY, free_port


def _clean_env(**extra: str) -> dict[str, str]:
    """No relay setting from the developer's environment: only what the test writes."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _write_env(directory: Path, **values: str) -> None:
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def _service_env(directory: Path, **values: str) -> None:
    _write_env(
        directory,
        USERPILOT_API_KEY=UPSTREAM_KEY,
        USERPILOT_ENDPOINT="http://127.0.0.1:9",
        RELAY_API_KEYS=RELAY_KEYS,
        RELAY_DATABASE_URL=f"sqlite:///{directory / 'from-dotenv.db'}",
        **values,
    )


@pytest.fixture
def process_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The levels `configure_logging` is called with; the root logger is put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    calls: list[str] = []
    real = app.main.configure_logging

    def counting(level: str) -> None:
        calls.append(level)
        real(level)

    monkeypatch.setattr(app.main, "configure_logging", counting)
    try:
        yield calls
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# --- RELAY_LOG_LEVEL from .env --------------------------------------------------------------


def test_the_entry_point_sets_the_level_from_dotenv_before_the_app_starts(tmp_path: Path) -> None:
    """`uvicorn app.main:app` reads `app`: by then the level is the `.env`'s, not INFO."""
    _service_env(tmp_path, RELAY_LOG_LEVEL="DEBUG")
    probe = (
        "import logging, app.main\n"
        "root = logging.getLogger()\n"
        "assert root.handlers == [], root.handlers  # importing configures nothing\n"
        "app.main.app\n"
        "print(logging.getLevelName(root.level), len(root.handlers),"
        " type(root.handlers[0].formatter).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DEBUG", "1", "JsonFormatter"]


def test_a_served_relay_logs_at_the_dotenv_level_json_from_the_first_line(
    tmp_path: Path,
) -> None:
    _service_env(tmp_path, RELAY_LOG_LEVEL="WARNING")
    port = free_port()
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
            cwd=tmp_path,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert lines and lines[0]["logger"].startswith("uvicorn")  # uvicorn's first line is JSON
    ours = [e for e in lines if e["logger"].startswith("userpilot_relay")]
    # The new store's warning is there; the INFO lines (relay started, stopped) are not.
    assert any("created a new, empty database" in e["msg"] for e in ours), lines
    assert [e for e in ours if e["level"] == "info"] == []
    assert (tmp_path / "from-dotenv.db").exists()


# --- logging configured once -----------------------------------------------------------------


def test_the_entry_point_configures_logging_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_logging: list[str]
) -> None:
    _service_env(tmp_path, RELAY_LOG_LEVEL="WARNING")
    monkeypatch.chdir(tmp_path)
    # The suite turns `.env` off (tests/conftest.py); this test is about reading it.
    monkeypatch.setitem(Settings.model_config, "env_file", ".env")
    service = app.main.service_app()
    assert process_logging == ["WARNING"]

    async def main() -> None:
        async with service.router.lifespan_context(service) as state:
            assert state is not None
            assert state["settings"].relay_log_level == "WARNING"
            assert state["settings"].relay_database_url.endswith("from-dotenv.db")
            assert process_logging == ["WARNING"]  # the start-up did not configure it again
            root = logging.getLogger()
            assert root.level == logging.WARNING
            assert len(root.handlers) == 1
            assert isinstance(root.handlers[0].formatter, JsonFormatter)

    run(main())
    assert process_logging == ["WARNING"]


def test_an_in_process_app_configures_logging_once_at_start_up(
    tmp_path: Path, process_logging: list[str]
) -> None:
    async def main() -> None:
        relay = InProcessRelay(f"sqlite:///{tmp_path / 'r.db'}", relay_log_level="ERROR")
        assert process_logging == []  # making the app configures nothing
        async with relay:
            assert process_logging == ["ERROR"]
            root = logging.getLogger()
            assert root.level == logging.ERROR
            assert len(root.handlers) == 1
            assert isinstance(root.handlers[0].formatter, JsonFormatter)
            assert (await relay.get("/healthz", key=None)).status_code == 200
        assert process_logging == ["ERROR"]

    run(main())


# --- the CLI reads the same settings ---------------------------------------------------------


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("userpilot-relay")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_uses_the_database_url_from_dotenv(tmp_path: Path) -> None:
    _write_env(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'from-dotenv.db'}")
    done = _cli("migrate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SQLite schema migrated to version"), done.stdout
    assert (tmp_path / "from-dotenv.db").exists()
    assert not (tmp_path / "relay.db").exists()  # not the default


def test_migrate_refuses_a_bad_url_in_the_services_words(tmp_path: Path) -> None:
    _write_env(tmp_path, RELAY_DATABASE_URL="mysql://db/relay")
    done = _cli("migrate", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "userpilot-relay migrate: RELAY_DATABASE_URL: "
        "must be sqlite:///<path> or postgresql://user@host/db"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / ".env"]


def test_the_environment_wins_over_dotenv_and_the_flag_over_both(tmp_path: Path) -> None:
    _write_env(tmp_path, RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'dotenv.db'}")
    done = _cli("migrate", cwd=tmp_path, RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'env.db'}")
    assert done.returncode == 0, done.stderr
    flag = _cli("migrate", "--database-url", f"sqlite:///{tmp_path / 'flag.db'}", cwd=tmp_path)
    assert flag.returncode == 0, flag.stderr
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["env.db", "flag.db"]


def test_the_service_and_migrate_refuse_a_bad_url_in_the_same_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("USERPILOT_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RELAY_API_KEYS", RELAY_KEYS)
    monkeypatch.setenv("RELAY_DATABASE_URL", "sqlite:///:memory:")
    with pytest.raises(ConfigError) as service:
        load_settings()
    with pytest.raises(ConfigError) as migrate:
        load_store_settings()
    assert str(service.value) == str(migrate.value)
    assert str(service.value).startswith("RELAY_DATABASE_URL: needs a file path")
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path / 'ok.db'}")
    assert load_settings().relay_database_url == load_store_settings().relay_database_url


def test_the_log_thread_survives_a_line_it_cannot_write(capsys: pytest.CaptureFixture[str]) -> None:
    """A line that cannot be made (here an integer past 64 bits) is reported and skipped; the
    lines after it are still written, in order, before the process ends."""
    import logging

    from app.logs import access, configure_logging, write_directly

    configure_logging("INFO")
    log = logging.getLogger("userpilot_relay.access")
    try:
        access(log, {"route": "/companies", "big": 2**70})
        logging.getLogger("userpilot_relay").info("after the bad line", extra={"n": 1})
        access(log, {"route": "/companies", "status": 202})
    finally:
        write_directly()
    out = capsys.readouterr().out.splitlines()
    assert any('"after the bad line"' in line for line in out)
    assert any('"status":202' in line for line in out)
