"""Run the simulator in a subprocess and drive its control API: the helper tests use.

`SimulatorProcess` starts `python -m app.simulator --port 0 ...` with the current interpreter,
waits for the `listening on` line to learn the port, and wraps `/_sim/` in plain methods.
A real process (not an in-process app) keeps the relay's tests honest: real sockets, real
timeouts, real dropped connections.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import httpx

_READY = re.compile(r"userpilot simulator listening on (http://\S+)")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SimulatorProcess:
    """A running simulator subprocess; use as a context manager or call `close()`."""

    def __init__(
        self,
        api_keys: Sequence[str] = ("test-key",),
        rate_limit_per_minute: int = 600,
        extra_args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
    ) -> None:
        command = [sys.executable, "-m", "app.simulator", "--host", host, "--port", "0"]
        for key in api_keys:
            command += ["--api-key", key]
        command += ["--rate-limit-per-minute", str(rate_limit_per_minute), *extra_args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if part
        )
        self.api_keys = list(api_keys)
        # The command is our own interpreter and module; arguments are passed without a shell.
        self._process = subprocess.Popen(  # noqa: S603
            command, stdout=subprocess.PIPE, text=True, env=env, cwd=_PROJECT_ROOT
        )
        assert self._process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(
            target=_pump, args=(self._process.stdout, lines), daemon=True, name="simulator-stdout"
        )
        self._pump.start()
        try:
            self.url = _wait_for_url(lines, startup_timeout)
        except BaseException:
            self._stop()
            raise
        self._client = httpx.Client(base_url=self.url, timeout=10.0)

    # Lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while running; 0 after a clean shutdown."""
        return self._process.poll()

    def close(self, timeout: float = 5.0) -> int:
        """Stop the simulator (SIGTERM, then SIGKILL after `timeout`); returns its exit status."""
        self._client.close()
        return self._stop(timeout)

    def _stop(self, timeout: float = 5.0) -> int:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
        returncode = self._process.wait()
        self._pump.join(timeout)  # it closes stdout at end of file
        return returncode

    # Control API

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Forget companies, requests, faults, jobs, rate windows and stats (config stays)."""
        self._call("POST", "/_sim/reset")

    def add_fault(self, **fault: Any) -> list[dict[str, Any]]:
        """Queue one fault, e.g. `add_fault(action="status", status=503, times=2)`."""
        return list(self._call("POST", "/_sim/faults", json=fault)["faults"])

    def add_faults(self, faults: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue several faults at once, consumed in order."""
        return list(self._call("POST", "/_sim/faults", json=list(faults))["faults"])

    def faults(self) -> list[dict[str, Any]]:
        """Faults not consumed yet."""
        return list(self._call("GET", "/_sim/faults")["faults"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def add_job_fault(self, **fault: Any) -> list[dict[str, Any]]:
        """Queue one job fault, e.g. `add_job_fault(action="fail", after_rows=2)`."""
        return list(self._call("POST", "/_sim/job_faults", json=fault)["job_faults"])

    def add_job_faults(self, faults: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue several job faults at once, consumed in order by the jobs they match."""
        return list(self._call("POST", "/_sim/job_faults", json=list(faults))["job_faults"])

    def job_faults(self) -> list[dict[str, Any]]:
        """Job faults not consumed yet."""
        return list(self._call("GET", "/_sim/job_faults")["job_faults"])

    def clear_job_faults(self) -> None:
        self._call("DELETE", "/_sim/job_faults")

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Requests received on Userpilot paths, oldest first; `path` filters by prefix."""
        params = {} if path is None else {"path": path}
        return list(self._call("GET", "/_sim/requests", params=params)["requests"])

    def companies(self) -> dict[str, dict[str, Any]]:
        return dict(self._call("GET", "/_sim/companies")["companies"])

    def company(self, company_id: str) -> dict[str, Any] | None:
        """The company's merged metadata, or None if Userpilot never heard of it."""
        response = self._client.get(f"/_sim/companies/{quote(company_id, safe='')}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def history(self, company_id: str) -> list[dict[str, Any]] | None:
        """The company's last writes (`{at, via, job_id, metadata}`), or None if unknown."""
        response = self._client.get(f"/_sim/companies/{quote(company_id, safe='')}/history")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return list(response.json()["history"])

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_sim/jobs")["jobs"])

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/stats"))

    def config(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/config"))

    def configure(self, **config: Any) -> dict[str, Any]:
        """Change live settings: rate_limit_per_minute, success_status, latency, ...

        Bulk: bulk_rows_per_minute, bulk_phase_seconds, bulk_refresh_seconds,
        bulk_success_status (200/201/202) and invalid_company_ids (a list). Deletes:
        delete_interval_seconds and delete_immediately.
        """
        return dict(self._call("PUT", "/_sim/config", json=config))

    def set_delete_pacing(
        self, interval_seconds: float, *, immediately: bool | None = None
    ) -> dict[str, Any]:
        """At most one delete request per key every `interval_seconds` (Userpilot: 2); with
        `immediately`, accepted deletions run at once instead of at `run_deletions()`."""
        config: dict[str, Any] = {"delete_interval_seconds": interval_seconds}
        if immediately is not None:
            config["delete_immediately"] = immediately
        return self.configure(**config)

    def deletions(self) -> list[dict[str, Any]]:
        """Accepted delete requests, oldest first: `{request_id, company_ids, accepted_at,
        scheduled_for, api_version, executed_at, deleted}` each."""
        return list(self._call("GET", "/_sim/deletions")["deletions"])

    def run_deletions(self) -> list[str]:
        """Run the daily (02:00 UTC) deletion now; the ids of the companies it removed."""
        return list(self._call("POST", "/_sim/run-deletions")["deleted"])


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Forward the child's stdout lines, and keep draining so it never blocks on a full pipe."""
    with stream:
        for line in stream:
            lines.put(line)
    lines.put(None)


def _wait_for_url(lines: queue.Queue[str | None], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    try:
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            match = _READY.search(line)
            if match:
                return match.group(1)
    except queue.Empty:
        raise TimeoutError(f"the simulator did not start within {timeout} s") from None
    raise RuntimeError("the simulator exited before listening (see its stderr above)")
