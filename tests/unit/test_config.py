"""Settings: relay keys, the region, the lease, and start-up refusals that never carry a secret."""

from __future__ import annotations

import hashlib

import pytest

from app.api.deps import find_key
from app.config import REGION_URLS, ConfigError, Settings, load_settings, parse_api_keys
from tests.relay import INGEST_KEY, UPSTREAM_KEY


def test_api_keys_plain_and_hashed() -> None:
    digest = hashlib.sha256(b"k2").hexdigest()
    keys = parse_api_keys(f" a:ingest:k1 , b:admin:sha256:{digest.upper()} ,")
    assert [(k.name, k.role) for k in keys] == [("a", "ingest"), ("b", "admin")]
    assert find_key(keys, "k1") is keys[0]
    assert find_key(keys, "k2") is keys[1]
    assert find_key(keys, digest) is None
    assert "k1" not in repr(keys)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "names no caller"),
        ("a:ingest", "name:role:key"),
        ("a:root:k", "role must be"),
        ("a:ingest:k,a:admin:j", "used twice"),
        ("a:ingest:k,b:admin:k", "same key"),
        ("a:ingest:sha256:abc", "64 hex"),
        ("a b:ingest:k", "name must be"),
    ],
)
def test_api_keys_refused(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_api_keys(raw)


def _settings(**kw: object) -> Settings:
    return Settings(userpilot_api_key="k", relay_api_keys="a:ingest:k", **kw)  # type: ignore[arg-type]


def test_region_choice() -> None:
    assert _settings().upstream_base_url == "https://analytex.userpilot.io"
    assert _settings(userpilot_region="EU").upstream_base_url == "https://analytex-eu.userpilot.io"
    assert REGION_URLS["eu"] == "https://analytex-eu.userpilot.io"
    custom = _settings(userpilot_region="eu", userpilot_endpoint="https://acme.userpilot.io/")
    assert custom.upstream_base_url == "https://acme.userpilot.io"
    with pytest.raises(ValueError):
        _settings(userpilot_region="asia")
    with pytest.raises(ValueError):
        _settings(userpilot_endpoint="analytex.userpilot.io")
    with pytest.raises(ValueError):
        _settings(relay_database_url="sqlite:///:memory:")


def test_a_lease_must_outlast_the_call() -> None:
    with pytest.raises(ValueError, match="RELAY_LEASE_SECONDS must exceed"):
        _settings(relay_lease_seconds=5, relay_upstream_timeout_seconds=10)
    assert _settings(relay_lease_seconds=3, relay_upstream_timeout_seconds=1)


# --- start-up errors never carry a secret -----------------------------------------------------


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir("/")  # no .env here
    monkeypatch.setenv("USERPILOT_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RELAY_API_KEYS", f"svc:ingest:{INGEST_KEY}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    return str(refused.value)


def test_a_bad_percent_escape_in_the_database_url_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refusal(
        monkeypatch, RELAY_DATABASE_URL="postgresql://relay:PGPASS%ZZsecret@db/relay"
    )
    assert message.startswith("RELAY_DATABASE_URL:")
    assert "secret" not in message and "PGPASS" not in message
    assert "\n" not in message


@pytest.mark.parametrize("variable", ["USERPILOT_ENDPOINT", "RELAY_PUBLIC_URL", "STRIPE_API_BASE"])
def test_credentials_in_urls_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    message = _refusal(monkeypatch, **{variable: "http://user:hunter2pass@example.test"})
    assert message.startswith(f"{variable}:")
    assert "credentials" in message
    assert "hunter2pass" not in message
