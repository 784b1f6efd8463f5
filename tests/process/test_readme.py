"""The README's commands, run as written, so the README cannot drift from what works.

The README's convention: a shell block a user runs is fenced ```sh; what it prints is fenced
```text (or ```console). This test reads the ```sh blocks of README.md and:

- starts the demo with the README's own `scripts/run --demo` line (a real process, `PORT` and
  `SIMULATOR_PORT` set to free ports), waits until the relay is ready and the simulator answers,
  then runs every ```sh block that calls the demo with curl, with `bash -euo pipefail -c`, in
  the repository. Only the ports change: `localhost:8000`/`127.0.0.1:8000` (and `8900`) become
  the chosen ones, and `PORT`/`SIMULATOR_PORT` are set for blocks that read them. A block must
  exit 0; where the README shows the answer (a `# 200 {...}` comment in the block, or the
  ```text block right after it), the delivery statuses it shows (`"status": "delivered"`) must
  be in what the block printed, in that order.
- runs the block with `userpilot-relay hash-key`: it prints `sha256:` and 64 hex digits.
- starts the `scripts/simulator` line in the background and checks that it answers on its port.

A block the README does not have fails, naming what is missing: the README must keep them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RELAY_PORT, SIMULATOR_PORT = 8000, 8900
BLOCK_TIMEOUT = 60.0
START_TIMEOUT = 180.0  # scripts/run runs scripts/setup first: a fresh install takes a while
OUTPUT_LANGUAGES = {"text", "console"}
LOCAL = re.compile(r"\b(?:localhost|127\.0\.0\.1)\b")
# Blocks that talk to something other than the demo: a cluster, an image, a deployment.
NOT_THE_DEMO = re.compile(r"\b(?:kubectl|helm|docker)\b")
STATUS = re.compile(r'"status"\s*:\s*"(\w+)"')
SHA256_KEY = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based
    output: str | None  # the ```text/```console block right after it, if any

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block, with the output block that directly follows it (blank lines apart)."""
    found: list[tuple[str, str, int, int]] = []  # language, text, first line, last line
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*```\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        found.append((opening.group(1).lower(), "\n".join(body) + "\n", start, i))
        i += 1
    blocks = []
    for n, (language, text, start, end) in enumerate(found):
        output = None
        if n + 1 < len(found):
            next_language, next_text, next_start, _ = found[n + 1]
            between = lines[end + 1 : next_start]
            if next_language in OUTPUT_LANGUAGES and not any(line.strip() for line in between):
                output = next_text
        blocks.append(Block(language, text, start + 1, output))
    return blocks


def sh_blocks() -> list[Block]:
    return [b for b in fenced_blocks(README.read_text()) if b.language == "sh"]


def first_block(predicate_text: str) -> Block | None:
    return next((b for b in sh_blocks() if predicate_text in b.text), None)


def demo_command() -> list[str] | None:
    """The README's `scripts/run --demo` line, as argv (its comment dropped)."""
    for block in sh_blocks():
        for line in block.text.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["scripts/run", "--demo"]:
                return words
    return None


def curl_blocks() -> list[Block]:
    return [
        b
        for b in sh_blocks()
        if re.search(r"\bcurl\b", b.text)
        and LOCAL.search(b.text)
        and not NOT_THE_DEMO.search(b.text)
    ]


def on_ports(text: str, relay: int, simulator: int) -> str:
    """The block with the demo's default ports replaced by the chosen ones, and nothing else."""
    for default, chosen in ((RELAY_PORT, relay), (SIMULATOR_PORT, simulator)):
        text = re.sub(rf"\b(localhost|127\.0\.0\.1):{default}\b", rf"\g<1>:{chosen}", text)
        text = re.sub(rf"(--port[= ]){default}\b", rf"\g<1>{chosen}", text)
    return text


def expected_statuses(block: Block) -> list[str]:
    """The delivery statuses the README shows as the block's answer."""
    shown = [line for line in block.text.splitlines() if re.match(r"^\s*#\s*\d{3}\s+\{", line)]
    if block.output is not None:
        shown.append(block.output)
    return STATUS.findall("\n".join(shown))


def is_subsequence(wanted: list[str], got: list[str]) -> bool:
    rest = iter(got)
    return all(any(w == g for g in rest) for w in wanted)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environment(**extra: str) -> dict[str, str]:
    """The suite's environment (relay settings already removed by conftest), ports chosen."""
    env = {k: v for k, v in os.environ.items() if k not in {"HOST", "PORT", "SIMULATOR_PORT"}}
    env.update(extra)
    return env


def run_block(text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


class Background:
    """A README command started in its own process group, stopped as Ctrl-C would."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until(self, ready: list[str], what: str) -> None:
        """Until every URL in `ready` answers 200; fails early if the command exits."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(ready)
        while pending:
            if self.process.poll() is not None:
                pytest.fail(f"{what} exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after {START_TIMEOUT:.0f} s:\n{self.output()}")
            try:
                if httpx.get(pending[0], timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C sends the demo's terminal
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Anything the command left behind in its group (the demo's simulator).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._out.close()


@dataclass(frozen=True)
class Demo:
    relay: int
    simulator: int
    env: dict[str, str]
    process: Background


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    command = demo_command()
    if command is None:
        pytest.fail("README.md has no ```sh block with a `scripts/run --demo` line to start")
    relay, simulator = free_port(), free_port()
    folder = tmp_path_factory.mktemp("demo")
    env = environment(PORT=str(relay), SIMULATOR_PORT=str(simulator))
    # The demo's queue in a folder of the test's own, not the clone's demo/relay.db.
    env["RELAY_DATABASE_URL"] = f"sqlite:///{folder / 'relay.db'}"
    process = Background(command, env, folder / "demo.log")
    try:
        process.wait_until(
            [f"http://127.0.0.1:{relay}/readyz", f"http://127.0.0.1:{simulator}/_sim/stats"],
            " ".join(command),
        )
        yield Demo(relay, simulator, env, process)
    finally:
        process.stop()


def test_readme_has_shell_blocks() -> None:
    assert README.exists()
    if not sh_blocks():
        pytest.fail("README.md has no ```sh block: commands a user runs are fenced ```sh")


@pytest.mark.parametrize("block", curl_blocks() or [None], ids=str)
def test_demo_block_runs_as_written(block: Block | None, demo: Demo) -> None:
    if block is None:
        pytest.fail("README.md has no ```sh block calling the demo with curl on localhost")
    script = on_ports(block.text, demo.relay, demo.simulator)
    result = run_block(script, demo.env)
    shown = f"{block}:\n{script}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, (
        f"exit {result.returncode}: {shown}\ndemo:\n{demo.process.output()}"
    )
    wanted = expected_statuses(block)
    assert is_subsequence(wanted, STATUS.findall(result.stdout)), f"README shows {wanted}: {shown}"


def test_hash_key_block_prints_a_configurable_key() -> None:
    block = first_block("userpilot-relay hash-key")
    if block is None:
        pytest.fail("README.md has no ```sh block with `userpilot-relay hash-key`")
    result = run_block(block.text, environment())
    assert result.returncode == 0, f"{block}: exit {result.returncode}\n{result.stderr}"
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert SHA256_KEY.fullmatch(last), f"{block} printed {result.stdout!r}, not sha256:<64 hex>"


def test_simulator_block_answers_on_its_port(tmp_path: Path) -> None:
    block = first_block("scripts/simulator")
    if block is None:
        pytest.fail("README.md has no ```sh block with `scripts/simulator`")
    lines = [line for line in block.text.splitlines() if "scripts/simulator" in line.split("#")[0]]
    port = free_port()
    argv = shlex.split(on_ports(lines[0], port, port), comments=True)
    if str(port) not in argv:
        pytest.fail(f"{block}: the `scripts/simulator` line names no --port {SIMULATOR_PORT}")
    process = Background(argv, environment(), tmp_path / "simulator.log")
    try:
        process.wait_until([f"http://127.0.0.1:{port}/_sim/stats"], " ".join(argv))
    finally:
        process.stop()
