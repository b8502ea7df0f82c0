"""``WFLO_*`` environment settings: parsed and validated, each error naming its variable.

Unset engine URLs mean "use the local stack" (``wflo up``); see ``resolve_endpoints``
(which starts it on demand) and ``ledger_url`` / ``temporal_ui_url`` (which only read
what runs: the Jupyter server extension never starts engines).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from wflo_jupyter.core.errors import ConfigError

ENGINES = ("postgres", "redis", "temporal", "kafka")
VARIABLE_BY_ENGINE = {
    "postgres": "WFLO_DATABASE_URL",
    "redis": "WFLO_REDIS_URL",
    "temporal": "WFLO_TEMPORAL_ADDRESS",
    "kafka": "WFLO_KAFKA_BOOTSTRAP",
}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _check_host_port(variable: str, value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"{variable}: {value!r} is not host:port (e.g. 127.0.0.1:7233)")
    return value


def normalize_database_url(value: str, variable: str = "WFLO_DATABASE_URL") -> str:
    """Accept ``postgresql://`` / ``postgres://`` / ``postgresql+psycopg://``; return the
    SQLAlchemy psycopg-3 form."""
    parts = urlsplit(value)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        rest = value.split("://", 1)[1] if "://" in value else ""
        if not rest or (not parts.hostname and "host=" not in parts.query):
            raise ConfigError(f"{variable}: {value!r} names no host")
        if not parts.path.strip("/"):
            raise ConfigError(f"{variable}: {value!r} names no database")
        return "postgresql+psycopg://" + rest
    raise ConfigError(f"{variable}: {value!r} is not a postgresql:// URL")


def _check_redis(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return value
    if parts.scheme == "unix" and parts.path:
        return value
    raise ConfigError(f"WFLO_REDIS_URL: {value!r} is not a redis://host:port/db URL")


def _check_kafka(value: str) -> str:
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ConfigError("WFLO_KAFKA_BOOTSTRAP: empty")
    for server in servers:
        _check_host_port("WFLO_KAFKA_BOOTSTRAP", server)
    return ",".join(servers)


def _check_http(variable: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return value.rstrip("/")
    raise ConfigError(f"{variable}: {value!r} is not an http(s):// URL")


def _seconds(variable: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86_400:
        raise ConfigError(f"{variable}: {value!r} is not a number of seconds (e.g. 5)")
    return seconds


def _count(variable: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{variable}: {value!r} is not a whole number above 0")
    return int(value)


def _switch(variable: str, value: str | None) -> bool:
    if value is None or value.lower() in ("0", "false", "no", "off"):
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{variable}: {value!r} is not 1 or 0")


def _check_isolation(value: str | None) -> str:
    mode = (value or "auto").lower()
    if mode not in ("auto", "docker", "bubblewrap", "unisolated"):
        raise ConfigError(
            f"WFLO_ISOLATION: {value!r} is not one of auto, docker, bubblewrap, unisolated"
        )
    return mode


def _check_docker(value: str) -> str:
    if urlsplit(value).scheme in ("unix", "tcp", "ssh", "npipe", "http", "https"):
        return value
    raise ConfigError(f"WFLO_DOCKER_HOST: {value!r} is not a unix:// or tcp:// address")


@dataclass(frozen=True)
class Settings:
    """The engine locations this process was configured with (``None``: local stack)."""

    home: Path
    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_ui: str | None = None  # WFLO_TEMPORAL_UI: the web UI beside temporal_address
    docker_host: str | None = None
    runtime_image: str = "wflo-runtime:python3.11"
    provider: str = "real"  # "real" | "mock" (WFLO_PROVIDER=mock: simulated answers)
    isolation: str = "auto"  # WFLO_ISOLATION: auto | docker | bubblewrap | unisolated
    relay_lease_s: float = 30.0  # WFLO_RELAY_LEASE_S: a stuck relay leader is replaced after
    relay_drain_s: float = 5.0  # WFLO_RELAY_DRAIN_S: a closing relay publishes for at most
    kafka_partitions: int = 3  # WFLO_KAFKA_PARTITIONS: of each event topic
    kafka_replication: int = 1  # WFLO_KAFKA_REPLICATION: of each event topic
    kafka_retention_ms: int = 7 * 24 * 3600 * 1000  # WFLO_KAFKA_RETENTION_MS (7 days)
    validate_events: bool = False  # WFLO_VALIDATE_EVENTS=1: relays check envelopes (tests)
    close_retry_s: float = 600.0  # WFLO_CLOSE_RETRY_S: a step's close waits for the ledger

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``WFLO_*`` from ``env`` (default ``os.environ``); raise ``ConfigError``."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        home = Path(get("WFLO_HOME") or Path.home() / ".wflo").expanduser()
        database = get("WFLO_DATABASE_URL")
        redis_url = get("WFLO_REDIS_URL")
        kafka = get("WFLO_KAFKA_BOOTSTRAP")
        temporal = get("WFLO_TEMPORAL_ADDRESS")
        docker_host = get("WFLO_DOCKER_HOST")
        provider = (get("WFLO_PROVIDER") or "real").lower()
        if provider not in ("real", "mock"):
            raise ConfigError(
                f"WFLO_PROVIDER: {provider!r} is not 'mock' (or unset for real providers)"
            )
        return cls(
            home=home,
            database_url=normalize_database_url(database) if database else None,
            redis_url=_check_redis(redis_url) if redis_url else None,
            kafka_bootstrap=_check_kafka(kafka) if kafka else None,
            temporal_address=(
                _check_host_port("WFLO_TEMPORAL_ADDRESS", temporal) if temporal else None
            ),
            temporal_namespace=get("WFLO_TEMPORAL_NAMESPACE") or "default",
            temporal_ui=(
                _check_http("WFLO_TEMPORAL_UI", get("WFLO_TEMPORAL_UI") or "")
                if get("WFLO_TEMPORAL_UI")
                else None
            ),
            docker_host=_check_docker(docker_host) if docker_host else None,
            runtime_image=get("WFLO_RUNTIME_IMAGE") or "wflo-runtime:python3.11",
            provider=provider,
            isolation=_check_isolation(get("WFLO_ISOLATION")),
            relay_lease_s=_seconds("WFLO_RELAY_LEASE_S", get("WFLO_RELAY_LEASE_S"), 30.0),
            relay_drain_s=_seconds("WFLO_RELAY_DRAIN_S", get("WFLO_RELAY_DRAIN_S"), 5.0),
            kafka_partitions=_count("WFLO_KAFKA_PARTITIONS", get("WFLO_KAFKA_PARTITIONS"), 3),
            kafka_replication=_count("WFLO_KAFKA_REPLICATION", get("WFLO_KAFKA_REPLICATION"), 1),
            kafka_retention_ms=_count(
                "WFLO_KAFKA_RETENTION_MS", get("WFLO_KAFKA_RETENTION_MS"), 7 * 24 * 3600 * 1000
            ),
            validate_events=_switch("WFLO_VALIDATE_EVENTS", get("WFLO_VALIDATE_EVENTS")),
            close_retry_s=_seconds("WFLO_CLOSE_RETRY_S", get("WFLO_CLOSE_RETRY_S"), 600.0),
        )

    def configured(self, engine: str) -> str | None:
        """The configured URL of ``engine``, or ``None`` when the local stack provides it."""
        return {
            "postgres": self.database_url,
            "redis": self.redis_url,
            "temporal": self.temporal_address,
            "kafka": self.kafka_bootstrap,
        }[engine]


@dataclass(frozen=True)
class Endpoints:
    """Resolved engine addresses a session connects to (``None``: not available)."""

    database_url: str
    temporal_address: str
    temporal_namespace: str
    redis_url: str | None
    kafka_bootstrap: str | None
    docker_host: str | None
    runtime_image: str


def resolve_endpoints(
    settings: Settings,
    need_kafka: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Endpoints:
    """Configured URLs where set, else engines of the local stack (started on demand)."""
    missing: list[str] = [
        e for e in ("postgres", "redis", "temporal") if not settings.configured(e)
    ]
    if need_kafka and not settings.kafka_bootstrap:
        missing.append("kafka")
    local: dict[str, str] = {}
    if missing or not settings.kafka_bootstrap:
        from wflo_jupyter.stack.local import LocalStack

        stack = LocalStack(settings.home, progress=progress)
        running = stack.engines()
        to_start: Collection[str] = [e for e in missing if e not in running]
        if to_start:
            running = stack.up(with_kafka="kafka" in to_start, only=to_start)
        local = {name: info.url for name, info in running.items()}
        if "postgres" in local:
            local["postgres"] = _local_ledger(local["postgres"])

    def pick(engine: str) -> str | None:
        return settings.configured(engine) or local.get(engine)

    database_url = pick("postgres")
    temporal_address = pick("temporal")
    if database_url is None or temporal_address is None:
        raise ConfigError("the local stack did not start postgres and temporal")
    return Endpoints(
        database_url=normalize_database_url(database_url),
        temporal_address=temporal_address,
        temporal_namespace=settings.temporal_namespace,
        redis_url=pick("redis"),
        kafka_bootstrap=pick("kafka"),
        docker_host=settings.docker_host,
        runtime_image=settings.runtime_image,
    )


def _local_ledger(server_url: str) -> str:
    """The local server's ledger lives in its own database, created on first use."""
    return urlunsplit(urlsplit(server_url)._replace(path="/wflo"))


def ledger_url(settings: Settings) -> str | None:
    """The ledger's database URL without starting anything: ``WFLO_DATABASE_URL``, else
    the ledger of the local stack when its PostgreSQL runs, else ``None``."""
    if settings.database_url:
        return settings.database_url
    from wflo_jupyter.stack.local import LocalStack

    info = LocalStack(settings.home).engines().get("postgres")
    return normalize_database_url(_local_ledger(info.url)) if info is not None else None


def temporal_address(settings: Settings) -> str | None:
    """The Temporal frontend without starting anything: ``WFLO_TEMPORAL_ADDRESS``, else
    the local stack's dev server when it runs, else ``None``."""
    if settings.temporal_address:
        return settings.temporal_address
    from wflo_jupyter.stack.local import LocalStack

    info = LocalStack(settings.home).engines().get("temporal")
    return info.url if info is not None else None


def temporal_ui_url(settings: Settings) -> str | None:
    """The Temporal web UI: ``WFLO_TEMPORAL_UI``, else the local stack's dev server's
    when Temporal is the local one and runs, else ``None``."""
    if settings.temporal_ui or settings.temporal_address:
        return settings.temporal_ui
    from wflo_jupyter.stack.local import LocalStack

    info = LocalStack(settings.home).engines().get("temporal")
    return info.extra.get("ui") if info is not None else None


def local_address(settings: Settings, engine: str) -> Callable[[], str | None] | None:
    """For an engine the local stack provides (no ``WFLO_*`` URL set): a function that
    reads where it runs now from ``stack.json`` (None while it is not running), so a
    kernel follows it when ``wflo up`` started it again at another address. None when
    ``engine`` is configured: a configured address is never replaced."""
    if settings.configured(engine):
        return None

    def current() -> str | None:
        from wflo_jupyter.stack.local import LocalStack

        info = LocalStack(settings.home).engines().get(engine)
        return info.url if info is not None else None

    return current
