"""``docker-compose.yml`` is the production-like stack; no image can be pulled here, so
its structure is checked against the settings module instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from wflo_jupyter.stack.settings import VARIABLE_BY_ENGINE, Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _published_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 2)[-2]) for p in service.get("ports", [])}


def test_services_present_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "kafka", "temporal", "temporal-ui"} <= set(services)
    for name in ("postgres", "redis", "kafka", "temporal"):
        assert "healthcheck" in services[name], name
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_named_volumes_for_state(compose: dict[str, Any]) -> None:
    volumes = set(compose["volumes"])
    for service in ("postgres", "redis", "kafka"):
        mounted = {v.split(":")[0] for v in compose["services"][service]["volumes"]}
        assert mounted <= volumes


def test_env_block_matches_settings(compose: dict[str, Any], tmp_path: Path) -> None:
    env = compose["x-wflo-env"]
    assert set(env) == set(VARIABLE_BY_ENGINE.values())
    settings = Settings.from_env({**env, "WFLO_HOME": str(tmp_path)})  # every value parses
    services = compose["services"]
    assert settings.database_url is not None
    assert ":5432/" in settings.database_url
    assert 5432 in _published_ports(services["postgres"])
    assert 6379 in _published_ports(services["redis"])
    assert 9092 in _published_ports(services["kafka"])
    assert 7233 in _published_ports(services["temporal"])
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    assert f"//{user}:" in env["WFLO_DATABASE_URL"]
