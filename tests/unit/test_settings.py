"""``WFLO_*`` settings: valid values accepted, bad ones named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from wflo_jupyter.core.errors import ConfigError
from wflo_jupyter.stack.settings import Settings, normalize_database_url


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"HOME": str(tmp_path), "WFLO_HOME": str(tmp_path / "w")})
    assert settings.home == tmp_path / "w"
    assert settings.database_url is None
    assert settings.configured("temporal") is None
    assert settings.runtime_image == "wflo-runtime:python3.11"
    assert (settings.relay_lease_s, settings.relay_drain_s) == (30.0, 5.0)
    assert (settings.kafka_partitions, settings.kafka_replication) == (3, 1)
    assert settings.kafka_retention_ms == 604_800_000
    assert settings.validate_events is False


def test_configured_values(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "WFLO_HOME": str(tmp_path),
            "WFLO_DATABASE_URL": "postgresql://u@db.example:5432/wflo",
            "WFLO_REDIS_URL": "redis://127.0.0.1:6379/0",
            "WFLO_KAFKA_BOOTSTRAP": "k1:9092, k2:9092",
            "WFLO_TEMPORAL_ADDRESS": "127.0.0.1:7233",
            "WFLO_DOCKER_HOST": "unix:///var/run/docker.sock",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u@db.example:5432/wflo"
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.configured("redis") == "redis://127.0.0.1:6379/0"
    relay = Settings.from_env(
        {"WFLO_HOME": str(tmp_path), "WFLO_RELAY_LEASE_S": "2.5", "WFLO_RELAY_DRAIN_S": "1"}
    )
    assert (relay.relay_lease_s, relay.relay_drain_s) == (2.5, 1.0)


def test_socket_database_url() -> None:
    url = "postgresql://postgres@/wflo?host=/tmp/pg"
    assert normalize_database_url(url) == "postgresql+psycopg://postgres@/wflo?host=/tmp/pg"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WFLO_DATABASE_URL", "notaurl"),
        ("WFLO_DATABASE_URL", "mysql://u@h/db"),
        ("WFLO_DATABASE_URL", "postgresql://u@host"),
        ("WFLO_REDIS_URL", "http://x"),
        ("WFLO_KAFKA_BOOTSTRAP", "nohost"),
        ("WFLO_KAFKA_BOOTSTRAP", "h:99999"),
        ("WFLO_TEMPORAL_ADDRESS", "localhost"),
        ("WFLO_DOCKER_HOST", "/var/run/docker.sock"),
        ("WFLO_RELAY_LEASE_S", "soon"),
        ("WFLO_RELAY_DRAIN_S", "-1"),
        ("WFLO_KAFKA_PARTITIONS", "0"),
        ("WFLO_KAFKA_RETENTION_MS", "7d"),
        ("WFLO_VALIDATE_EVENTS", "maybe"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WFLO_HOME": str(tmp_path), variable: value})
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert value in message
    assert "\n" not in message


def test_provider_setting(tmp_path: Path) -> None:
    assert Settings.from_env({"WFLO_HOME": str(tmp_path)}).provider == "real"
    assert (
        Settings.from_env({"WFLO_HOME": str(tmp_path), "WFLO_PROVIDER": "mock"}).provider == "mock"
    )
    with pytest.raises(ConfigError, match="WFLO_PROVIDER: 'fake' is not 'mock'"):
        Settings.from_env({"WFLO_HOME": str(tmp_path), "WFLO_PROVIDER": "fake"})


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False)])
def test_validate_events_switch(value: str, expected: bool, tmp_path: Path) -> None:
    env = {"WFLO_HOME": str(tmp_path), "WFLO_VALIDATE_EVENTS": value}
    assert Settings.from_env(env).validate_events is expected
