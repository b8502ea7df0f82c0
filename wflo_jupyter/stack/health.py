"""Health checks of the local engines, each with its real client protocol: PostgreSQL
``SELECT 1``, Redis ``PING``, Temporal's ``default`` namespace, Kafka broker metadata."""

from __future__ import annotations

import importlib
import json
import socket
import time
import urllib.request
from collections.abc import Callable

from wflo_jupyter.stack.engines import EngineInfo
from wflo_jupyter.stack.errors import StackError, one_line


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _check_postgres(info: EngineInfo, timeout: float) -> None:
    import psycopg

    with psycopg.connect(
        info.extra["dsn"], connect_timeout=max(2, int(timeout)), autocommit=True
    ) as conn:
        row = conn.execute("SELECT 1").fetchone()
    if row is None or row[0] != 1:
        raise RuntimeError(f"SELECT 1 returned {row!r}")


def _check_redis(info: EngineInfo, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(info.url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def _check_temporal(info: EngineInfo, timeout: float) -> None:
    # The gRPC frontend must accept connections, and the frontend's HTTP API (served by the
    # same process, proxied onto gRPC) must describe the "default" namespace as registered.
    with socket.create_connection(_host_port(info.url), timeout=timeout):
        pass
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(info.extra["http"] + "/api/v1/namespaces/default", timeout=timeout) as resp:
        body = json.loads(resp.read())
    state = body.get("namespaceInfo", {}).get("state")
    if state != "NAMESPACE_STATE_REGISTERED":
        raise RuntimeError(f"namespace 'default' is {state}")


def _check_kafka(info: EngineInfo, timeout: float) -> None:
    with socket.create_connection(_host_port(info.url), timeout=timeout):
        pass
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": info.url,
            "socket.timeout.ms": int(timeout * 1000),
            "log_level": 0,  # no librdkafka chatter on the CLI's stderr
        }
    )
    metadata = admin.list_topics(timeout=timeout)
    if not metadata.brokers:
        raise RuntimeError("metadata lists no broker")


def require_client(name: str) -> None:
    """Import the client library the health check of ``name`` uses, or raise StackError."""
    module = {"postgres": "psycopg", "redis": "redis", "kafka": "confluent_kafka.admin"}.get(name)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise StackError(
            f"{name}: its client library {module.split('.')[0]} cannot be imported "
            f"({one_line(exc)}); reinstall wflo-jupyter's dependencies"
        ) from exc


def health(info: EngineInfo, timeout: float = 3.0) -> str | None:
    """None if ``info`` answers its client protocol, else a one-line reason."""
    try:
        if info.name == "postgres":
            _check_postgres(info, timeout)
        elif info.name == "redis":
            _check_redis(info, timeout)
        elif info.name == "temporal":
            _check_temporal(info, timeout)
        else:
            _check_kafka(info, timeout)
    except Exception as exc:
        return one_line(exc)
    return None


def wait_healthy(
    info: EngineInfo, timeout: float, owns: Callable[[EngineInfo], bool]
) -> str | None:
    """:func:`health` retried until it passes, ``timeout`` passes or ``owns(info)`` stops
    holding (the process is gone); None or the last reason."""
    deadline = time.monotonic() + timeout
    while True:
        problem = health(info, timeout=min(3.0, timeout))
        if problem is None or time.monotonic() >= deadline or not owns(info):
            return problem
        time.sleep(0.2)
