"""Fixtures for every tier (unit/, integration/, process/): a real Userpilot simulator process
and real relay processes on 127.0.0.1, a store on each backend; the `process` mark (every test
under tests/process/, and any test that starts a process); and `StillRunning`, which names a
test that runs longer than 10 s while it runs."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from app.config import Settings, StoreSettings
from app.simulator.process import SimulatorProcess
from tests import pg
from tests.relay import RELAY_KEYS, UPSTREAM_KEY, RelayProcess

RelayFactory = Callable[..., RelayProcess]
_SETTING_PREFIXES = ("USERPILOT_", "RELAY_", "HUBSPOT_", "STRIPE_")

# --- progress a person can read: a test that runs long says its name ----------------------
STILL_RUNNING_AFTER = 10.0  # seconds before the first line, then one every STILL_RUNNING_EVERY
STILL_RUNNING_EVERY = 30.0


class StillRunning:
    """Prints `still running: <nodeid> (N s)` while a test runs past STILL_RUNNING_AFTER, so a
    slow or hung test is named while it runs (`-q` shows only dots; `--durations` comes last).

    It writes to a duplicate of the terminal's stdout taken outside capturing: pytest captures
    file descriptor 1 while a test runs, and these lines are not the test's output."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._stop()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(nodeid, self._done), name="still-running", daemon=True
        )
        self._thread.start()

    def pytest_runtest_logfinish(self) -> None:
        self._stop()

    def pytest_unconfigure(self) -> None:
        self._stop()
        self.out.close()

    def _stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self, nodeid: str, done: threading.Event) -> None:
        waited, wait = 0.0, STILL_RUNNING_AFTER
        while not done.wait(wait):
            waited += wait
            wait = STILL_RUNNING_EVERY
            self.out.write(f"\nstill running: {nodeid} ({waited:.0f} s)\n")
            self.out.flush()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.collectonly:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    config.pluginmanager.register(StillRunning(out), "still-running")


# What makes a test part of the slow tier (`-m process`): its file is under tests/process/, or
# elsewhere a fixture that starts a relay process, or a test body that starts one (or any other
# subprocess) itself.
PROCESS_TIER = Path(__file__).resolve().parent / "process"
PROCESS_FIXTURES = frozenset({"relay", "relay_factory"})
STARTS_A_PROCESS = re.compile(
    r"\b(?:RelayProcess|SimulatorProcess|Popen|subprocess\.\w+|run_cli)\("
)


def _starts_a_process(item: pytest.Item) -> bool:
    if PROCESS_TIER in item.path.resolve().parents:
        return True
    if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return STARTS_A_PROCESS.search(source) is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of tests/process/ and every test that starts a process `process`, so
    that `scripts/test -m "not process"` is the fast inner loop; a test that waits on real
    pacing carries the mark itself."""
    for item in items:
        if _starts_a_process(item):
            item.add_marker(pytest.mark.process)


def _is_setting(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(_SETTING_PREFIXES) and not upper.startswith("RELAY_TEST_")


@pytest.fixture(autouse=True, scope="session")
def no_developer_settings() -> Iterator[None]:
    """The suite never reads the developer's `.env` or relay settings from the environment:
    every test says what it runs with (RELAY_TEST_* settings of the suite itself stay)."""
    saved = {name: value for name, value in os.environ.items() if _is_setting(name)}
    for name in saved:
        del os.environ[name]
    models = (Settings, StoreSettings)  # each has its own config: both ignore `.env`
    env_files = [model.model_config.get("env_file") for model in models]
    for model in models:
        model.model_config["env_file"] = None
    try:
        yield
    finally:
        for model, env_file in zip(models, env_files, strict=True):
            model.model_config["env_file"] = env_file
        os.environ.update(saved)


@pytest.fixture(scope="session")
def simulator_process() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(api_keys=[UPSTREAM_KEY], rate_limit_per_minute=600) as sim:
        yield sim


@pytest.fixture
def sim(simulator_process: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, emptied and set back to Userpilot's defaults."""
    simulator_process.reset()
    simulator_process.configure(
        rate_limit_per_minute=600,
        success_status=202,
        latency=0,
        bulk_rows_per_minute=1_000_000,
        bulk_phase_seconds=0.1,
        bulk_refresh_seconds=0.1,
        bulk_success_status=202,
        invalid_company_ids=[],
        delete_interval_seconds=2.0,
        delete_immediately=False,
    )
    return simulator_process


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the relay keeps its queue: a fresh store for every test, on each backend.

    PostgreSQL gets a new database per test (dropped after); without a server the postgres
    variants skip, unless `RELAY_TEST_REQUIRE_POSTGRES=1` makes them fail (see tests/pg.py).
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    with pg.fresh_database() as name:
        yield pg.database_url(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store, for tests whose behaviour does not depend on the backend (auth,
    validation, headers, probes): they run once, not once per store."""
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def relay_factory(
    sim: SimulatorProcess, database_url: str, tmp_path: Path
) -> Iterator[RelayFactory]:
    started: list[RelayProcess] = []

    def start(**env: str) -> RelayProcess:
        full = {
            "USERPILOT_API_KEY": UPSTREAM_KEY,
            "USERPILOT_ENDPOINT": sim.url,
            "RELAY_API_KEYS": RELAY_KEYS,
            "RELAY_DATABASE_URL": database_url,
            "RELAY_RETRY_BASE_SECONDS": "0.2",
            "RELAY_RETRY_MAX_SECONDS": "2",
            "RELAY_SHUTDOWN_GRACE_SECONDS": "5",
        }
        full.update(env)
        relay = RelayProcess(full, tmp_path / f"relay-{len(started)}.log")
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    return relay_factory()
