"""What ships the relay: the image's command, the Helm chart, the alerts and the dashboard.

The live tests start the image's own command (read from the Dockerfile) as a real process and
scrape `/metrics`, so an alert or a panel can never point at a metric the relay does not export.
The chart tests run `scripts/check-deploy` (hadolint, helm lint/template, kubernetes-validate,
promtool) and then read the manifests it rendered. Missing tools skip those tests locally; with
CI set they are mandatory.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

# Every test here runs real processes: the slow tier.
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "helm" / "userpilot-relay"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
RENDERED = ROOT / ".cache" / "deploy"
APP_MODULE = "app.main:app"
IN_CI = bool(os.environ.get("CI"))

SECRET_ENV = {
    "USERPILOT_API_KEY",
    "RELAY_API_KEYS",
    "HUBSPOT_CLIENT_SECRET",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_KEY",
}
# The plain secret values in ci/postgres-values.yaml: they may appear only inside a Secret.
CI_SECRET_VALUES = ("test-up-key", "ingestkey", "adminkey", "test-hubspot-secret", "whsec_test")


def missing(reason: str) -> NoReturn:
    """Skip locally when a tool is missing; in CI a missing tool is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (mandatory with CI set)")
    pytest.skip(reason)


# --- the image's command ------------------------------------------------------------------


def image_command() -> list[str]:
    """The final stage's ENTRYPOINT + CMD of the Dockerfile, in exec (JSON) form."""
    stages = re.split(r"(?im)^FROM\s", DOCKERFILE.read_text())
    final = re.sub(r"\\\n", " ", stages[-1])
    argv: dict[str, list[str]] = {}
    for instruction in ("ENTRYPOINT", "CMD"):
        found = re.findall(rf"(?m)^{instruction}\s+(.+)$", final)
        if found:
            value = json.loads(found[-1])  # exec form only: shell form would not get SIGTERM
            assert isinstance(value, list), f"{instruction} must be a JSON array"
            argv[instruction] = value
    return argv.get("ENTRYPOINT", []) + argv.get("CMD", [])


def test_image_runs_uvicorn_on_the_app_the_tests_start() -> None:
    argv = image_command()
    assert argv[:2] == ["uvicorn", APP_MODULE], argv
    assert argv[argv.index("--port") + 1] == "8000"
    assert re.search(r"(?m)^EXPOSE 8000$", DOCKERFILE.read_text())
    # The other suites start the relay themselves: they must run the module the image runs.
    started = {
        (path.name, module)
        for path in (ROOT / "tests").rglob("*.py")
        if path.name != Path(__file__).name
        for module in re.findall(r"[\"']uvicorn[\"'],\s*[\"']([\w.]+:\w+)[\"']", path.read_text())
    }
    assert started, "no test starts `uvicorn <module>:app`: what do the tests run?"
    assert {module for _, module in started} == {APP_MODULE}, started


def test_image_runs_non_root_on_a_data_volume() -> None:
    final = re.split(r"(?im)^FROM\s", DOCKERFILE.read_text())[-1]
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users and not users[-1].startswith(("root", "0")), users
    assert "RELAY_DATABASE_URL=sqlite:////data/relay.db" in final
    patterns = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] not in "#"
    ]
    assert patterns[0] == "*", "the .dockerignore is an allow-list: .env and .git stay out"
    assert {"!app/", "!pyproject.toml"} <= set(patterns)


# --- the build context --------------------------------------------------------------------
# tests/process/test_image.py builds the image for real (podman); these checks are the quick ones.


def ignore_patterns(text: str) -> list[str]:
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*`, `?` within a path element, `**` across."""
    pattern = os.path.normpath(pattern.lstrip("/"))
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the context leaves `path` out: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        regex = pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not pattern.startswith("!")
    return result


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context sources of every COPY and ADD (not `COPY --from`), in order."""
    sources: list[str] = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        match = re.match(r"(?i)\s*(COPY|ADD)\s+(.+)$", line)
        if not match:
            continue
        rest = match.group(2).strip()
        args = json.loads(rest) if rest.startswith("[") else rest.split()
        if any(a.startswith("--from") for a in args):
            continue
        sources.extend([a for a in args if not a.startswith("--")][:-1])
    return sources


def excluded_copy_sources(patterns: list[str]) -> list[str]:
    """COPY sources the context leaves out: the path itself or, for a folder, a module in it."""
    excluded = []
    for source in copy_sources(DOCKERFILE.read_text()):
        path = os.path.normpath(source)
        assert (ROOT / path).exists(), f"COPY {source}: no such file in the repository"
        files = [path]
        if (ROOT / path).is_dir():
            files = [p.relative_to(ROOT).as_posix() for p in (ROOT / path).rglob("*.py")]
            assert files, f"COPY {source}: a folder without modules"
        if any(ignored(f, patterns) for f in files):
            excluded.append(path)
    return excluded


def test_every_copy_source_is_in_the_build_context() -> None:
    patterns = ignore_patterns((ROOT / ".dockerignore").read_text())
    sources = copy_sources(DOCKERFILE.read_text())
    assert {"pyproject.toml", "constraints.txt", "app/"} <= set(sources), sources
    assert excluded_copy_sources(patterns) == []
    # And the allow-list still keeps out what must never reach an image.
    for secret in (".env", "app/.env", ".git/config", ".venv/bin/python", "relay.db", "tests/x.py"):
        assert ignored(secret, patterns), f"{secret} would be sent to the builder"


def test_the_copy_check_catches_issue_20() -> None:
    # The .dockerignore of issue 20: the pins were filtered out and `COPY` failed at build time.
    assert excluded_copy_sources(["*", "!pyproject.toml", "!app/"]) == ["constraints.txt"]
    assert excluded_copy_sources(["*", "!pyproject.toml", "!constraints.txt"]) == ["app"]
    assert excluded_copy_sources(["**", "!*.toml", "!*.txt", "!app/**"]) == []


def test_dockerfile_needs_no_registry_but_the_base() -> None:
    text = DOCKERFILE.read_text()
    # BuildKit would pull a `# syntax=` frontend from Docker Hub; the built-in one suffices.
    assert not re.search(r"(?im)^#\s*syntax\s*=", text)
    assert re.search(r"(?m)^ARG PYTHON_IMAGE=", text), "the base must be a build argument"
    assert re.findall(r"(?m)^FROM \$\{PYTHON_IMAGE\}", text), "every stage on PYTHON_IMAGE"


# --- the live relay -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ImageRelay:
    """The image's command run as a local process on a fresh SQLite file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "relay.log"
        argv = image_command()
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(self.port)
        self.argv = [sys.executable, "-m", *argv]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELAY_", "USERPILOT_", "HUBSPOT_", "STRIPE_"))
        }
        env.update(
            USERPILOT_API_KEY="test-up-key",
            USERPILOT_ENDPOINT="http://127.0.0.1:9",
            RELAY_API_KEYS="svc:ingest:ingestkey,ops:admin:adminkey",
            RELAY_DATABASE_URL=f"sqlite:///{workdir / 'relay.db'}",
            PYTHONPATH=str(ROOT),
        )
        with self.log_path.open("wb") as log:
            # cwd outside the repo: a developer's .env must not leak into the test.
            self.process = subprocess.Popen(
                self.argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_healthy()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the relay exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"the relay did not answer /healthz in {timeout:.0f}s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def image_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageRelay]:
    running = ImageRelay(tmp_path_factory.mktemp("relay"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def scrape(image_relay: ImageRelay) -> str:
    """`/metrics` after a little traffic, so the request and queue series carry samples."""
    with httpx.Client(base_url=image_relay.base_url, timeout=5) as client:
        accepted = client.post(
            "/companies",
            headers={"Authorization": "Bearer ingestkey"},
            json={"company_id": "acme", "metadata": {"plan": "pro"}},
        )
        assert accepted.status_code == 202, accepted.text
        assert client.get("/readyz").status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition declares, by family type (a family may have no samples)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def referenced_names() -> dict[str, set[str]]:
    pattern = re.compile(r"\buserpilot_relay_[a-z0-9_]+")
    return {path.name: set(pattern.findall(path.read_text())) for path in (ALERTS, DASHBOARD)}


def test_alerts_and_dashboard_use_only_exported_metrics(scrape: str) -> None:
    exported = exported_names(scrape)
    for source, names in referenced_names().items():
        assert names, f"{source} references no userpilot_relay_ metric"
        unknown = sorted(names - exported)
        assert not unknown, f"{source} uses metrics the relay does not export: {unknown}"


def test_every_exported_metric_is_on_the_dashboard(scrape: str) -> None:
    shown = referenced_names()["dashboard.json"]
    families = {
        f.name
        for f in text_string_to_metric_families(scrape)
        if f.name.startswith("userpilot_") and not f.name.endswith("_created")
    }
    hidden = sorted(f for f in families if not any(n == f or n.startswith(f + "_") for n in shown))
    assert not hidden, f"exported but on no dashboard panel: {hidden}"


def test_metrics_pass_promtool(scrape: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    # `rendered` runs scripts/check-deploy first, which installs promtool where it may.
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_relay_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    running = ImageRelay(tmp_path)
    started = time.monotonic()
    code = running.stop()
    elapsed = time.monotonic() - started
    # uvicorn re-raises the signal it handled once shutdown is complete: 0 or -SIGTERM.
    assert code in (0, -signal.SIGTERM), f"exit {code}:\n{running.log()}"
    assert elapsed < 25, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in running.log(), running.log()


# --- the chart, the rules, the docs -------------------------------------------------------


def helm_binary() -> str | None:
    cached = ROOT / ".cache" / "tools" / "helm"
    return shutil.which("helm") or (str(cached) if cached.exists() else None)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Run scripts/check-deploy once; answer the manifests it rendered, by values file."""
    tools = {
        "helm": helm_binary(),
        "promtool": shutil.which("promtool"),
        "hadolint": shutil.which("hadolint", path=str(Path(sys.executable).parent)),
        "kubernetes-validate": shutil.which(
            "kubernetes-validate", path=str(Path(sys.executable).parent)
        ),
    }
    absent = [name for name, path in tools.items() if path is None]
    if absent and not IN_CI:
        pytest.skip(f"scripts/check-deploy needs {', '.join(absent)} (it fetches them with CI set)")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-deploy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, f"check-deploy failed:\n{result.stdout}\n{result.stderr}"
    return {
        shape: [d for d in yaml.safe_load_all((RENDERED / f"{shape}.yaml").read_text()) if d]
        for shape in ("default", "postgres")
    }


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kinds(docs, "Deployment")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(main)


def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(docs)["env"]}


def test_check_deploy_passes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert rendered["default"] and rendered["postgres"]


def test_sqlite_shape_is_one_pod_on_a_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (claim,) = kinds(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts
    assert env_of(docs)["RELAY_DATABASE_URL"]["value"] == "sqlite:////data/relay.db"
    assert not kinds(docs, "HorizontalPodAutoscaler") and not kinds(docs, "PodDisruptionBudget")


def test_postgres_shape_scales(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["postgres"]
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert not kinds(docs, "PersistentVolumeClaim")
    (hpa,) = kinds(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    (pdb,) = kinds(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    # The key's whole budget: replicas share it through the database's send slots.
    assert env_of(docs)["RELAY_RATE_LIMIT_PER_MINUTE"]["value"] == "600"
    database = env_of(docs)["RELAY_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    (policy,) = kinds(docs, "NetworkPolicy")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 443, 5432}


def test_secrets_only_in_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for shape, docs in rendered.items():
        env = env_of(docs)
        for name in SECRET_ENV | ({"RELAY_DATABASE_URL"} if shape == "postgres" else set()):
            assert "value" not in env[name], f"{shape}: {name} is a plain env value"
            assert "secretKeyRef" in env[name]["valueFrom"], f"{shape}: {name}"
        for doc in docs:
            if doc["kind"] == "Secret":
                continue
            text = yaml.safe_dump(doc)
            leaked = [v for v in (*CI_SECRET_VALUES, "relay:relay@") if v in text]
            assert not leaked, f"{shape}: {doc['kind']} carries secret values {leaked}"
    (secret,) = kinds(rendered["postgres"], "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["userpilot-api-key"] == "test-up-key"
    assert decoded["database-url"].startswith("postgresql://")
    assert not kinds(rendered["default"], "Secret"), "existingSecret: the chart creates none"


def test_pod_is_hardened_and_probed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        main = container(docs)
        assert "command" not in main and "args" not in main, "the image's CMD must run"
        context = main["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert main["resources"]["requests"] and main["resources"]["limits"]
        assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["postgres"]
    (monitor,) = kinds(docs, "ServiceMonitor")
    (rule,) = kinds(docs, "PrometheusRule")
    assert monitor["apiVersion"] == rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    source = ALERTS.read_text().replace('job=~".*userpilot-relay.*"', 'job="userpilot-relay"')
    assert rule["spec"]["groups"] == yaml.safe_load(source)["groups"]
    (dashboard,) = [c for c in kinds(docs, "ConfigMap") if "userpilot-relay.json" in c["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["userpilot-relay.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    for kind in ("ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Ingress"):
        assert not kinds(rendered["default"], kind), f"{kind} is off by default"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("replicaCont=3", "replicaCont"),
        ("serviceMonitor.enabeld=true", "enabeld"),
        ("database.url=mysql://x", "database"),
        ("extraEnv[0].name=USERPILOT_API_KEY,extraEnv[0].value=plain", "extraEnv"),
    ],
)
def test_values_typos_fail_at_install(
    rendered: dict[str, list[dict[str, Any]]], override: str, message: str
) -> None:
    helm = helm_binary()
    assert helm is not None
    result = subprocess.run(
        [helm, "template", "x", str(CHART), "--set", "existingSecret=s", "--set", override],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, f"{override} rendered without complaint"
    assert message in result.stderr, result.stderr


def test_every_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^\s*(- )?[A-Za-z_][\w.-]*:")
    undocumented = [
        line.strip()
        for previous, line in itertools.pairwise(lines)
        if key.match(line) and not re.match(r"^\s*(- )?#", previous)
    ]
    assert not undocumented, f"values without a comment above: {undocumented}"


def test_every_alert_has_a_runbook() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 7
    # The runbooks live in docs/runbooks.md, one section per alert headed by its name.
    runbooks = "docs/runbooks.md"
    doc = (ROOT / runbooks).read_text()
    headings = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"(?m)^#{2,4} (.+)$", doc)
    }
    for rule in rules:
        path, anchor = rule["annotations"]["runbook"].split("#", 1)
        assert path == runbooks, f"{rule['alert']}: runbook should point at {runbooks}"
        assert anchor == rule["alert"].lower()
        assert anchor in headings, f"no runbook heading for {rule['alert']} in {runbooks}"
        assert rule["labels"]["severity"] in ("warning", "critical")
