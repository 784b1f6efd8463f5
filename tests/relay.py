"""Run the relay as a real process (`uvicorn app.main:app`, as the README does) and talk to it
over HTTP on 127.0.0.1. Its output goes to a file so tests can read every log line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
INGEST_KEY = "ingest-key-7f3a9c1e5b"
ADMIN_KEY = "admin-key-2d8e4b6a0c"
UPSTREAM_KEY = "up-secret-9b1d7e3f5a"
RELAY_KEYS = f"svc:ingest:{INGEST_KEY},ops:admin:{ADMIN_KEY}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    """One relay process; `restart()` starts it again on the same port and store."""

    def __init__(self, env: dict[str, str], log_path: Path, *, port: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = str(ROOT)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            # Not the checkout: a developer's .env there must not reach the relay under test.
            cwd=self.log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited at start-up:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"relay did not start:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for a clean exit."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def restart(self) -> None:
        self.start()

    # HTTP helpers -------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, key: str | None = INGEST_KEY, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return httpx.request(method, self.url + path, headers=headers, timeout=40, **kwargs)

    def post_company(
        self, company_id: str, metadata: dict[str, Any], **kwargs: Any
    ) -> httpx.Response:
        return self.request(
            "POST", "/companies", json={"company_id": company_id, "metadata": metadata}, **kwargs
        )

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/deliveries/{delivery_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait_for(self, delivery_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.delivery(delivery_id)
            if body["status"] == status:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{delivery_id} is {body['status']}, not {status}: {body}")
            time.sleep(0.05)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=10).text, name, **labels)


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if _normalise(sample) == want:
            return float(value)
    return 0.0


def _normalise(sample: str) -> str:
    if "{" not in sample:
        return sample
    name, _, rest = sample.partition("{")
    pairs = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(pairs) + "}"


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
