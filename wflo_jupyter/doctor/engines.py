"""The doctor's look at each engine: where it is (a ``WFLO_*`` variable, else the local
stack's ``stack.json``), whether it answers its own client protocol, and its version
(PostgreSQL ``server_version``, Redis ``INFO``, Temporal's system info, the Kafka
brokers the metadata lists: the Kafka protocol reports no server version). Nothing is
started: an engine the local stack does not run is reported as such."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from wflo_jupyter.core.doctor_rules import EngineSeen
from wflo_jupyter.stack.binaries import find_binary
from wflo_jupyter.stack.engines import EngineInfo
from wflo_jupyter.stack.errors import StackError
from wflo_jupyter.stack.local import LocalStack
from wflo_jupyter.stack.settings import ENGINES, VARIABLE_BY_ENGINE, Settings

LOCAL = "local stack"


def engine_targets(settings: Settings) -> list[tuple[str, str | None, str, str | None]]:
    """(engine, address to connect to, source, address to show) for each engine; the
    address is None when nothing is configured and the local stack does not run it."""
    running: dict[str, EngineInfo] | None = None
    targets: list[tuple[str, str | None, str, str | None]] = []
    for engine in ENGINES:
        configured = settings.configured(engine)
        if configured:
            targets.append((engine, configured, VARIABLE_BY_ENGINE[engine], shown(configured)))
            continue
        if running is None:
            running = LocalStack(settings.home).engines()
        info = running.get(engine)
        if info is None:
            targets.append((engine, None, LOCAL, None))
        else:
            address = info.extra.get("dsn", info.url) if engine == "postgres" else info.url
            targets.append((engine, address, LOCAL, shown(info.url)))
    return targets


def local_engine(engine: str) -> EngineSeen:
    """An engine nothing points at and the local stack does not run: can it start it?"""
    try:
        find_binary(engine)
    except StackError as exc:
        return EngineSeen(engine, None, LOCAL, error=str(exc), variable=VARIABLE_BY_ENGINE[engine])
    return EngineSeen(engine, None, LOCAL, variable=VARIABLE_BY_ENGINE[engine])


def shown(address: str) -> str:
    """``address`` without its password."""
    parts = urlsplit(address)
    if not parts.scheme or parts.password is None:
        return address
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def probe_engine(
    engine: str, address: str, source: str, display: str, timeout_s: float
) -> EngineSeen:
    """Ask ``engine`` at ``address`` for its version within about ``timeout_s``."""
    try:
        version = _VERSION[engine](address, timeout_s)
    except Exception as exc:  # any failure of the client is the engine's state
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[-1][:160]}" if text else type(exc).__name__
        return EngineSeen(engine, display, source, answered=False, error=reason)
    return EngineSeen(engine, display, source, answered=True, version=version)


def _postgres(address: str, timeout_s: float) -> str:
    import psycopg

    dsn = address.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s)), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def _redis(address: str, timeout_s: float) -> str:
    import redis

    client = redis.Redis.from_url(
        address, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        info = client.info("server")
    finally:
        client.close()
    return str(info.get("redis_version", "?"))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _temporal(address: str, timeout_s: float) -> str:
    # A closed port is told by TCP alone: the SDK's core would log its retries to stderr.
    with socket.create_connection(_host_port(address), timeout=timeout_s):
        pass
    loop = asyncio.new_event_loop()  # this probe's own thread and loop, never the kernel's
    try:
        return loop.run_until_complete(
            asyncio.wait_for(_system_info(address, timeout_s), timeout_s)
        )
    finally:
        loop.close()


async def _system_info(address: str, timeout_s: float) -> str:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
    from temporalio.client import Client

    client = await Client.connect(address, connect_timeout=timedelta(seconds=timeout_s))
    info = await client.workflow_service.get_system_info(
        GetSystemInfoRequest(), timeout=timedelta(seconds=timeout_s)
    )
    return info.server_version or "?"


def _kafka(address: str, timeout_s: float) -> str:
    first = address.split(",")[0]
    with socket.create_connection(_host_port(first), timeout=timeout_s):
        pass
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": address,
            "socket.timeout.ms": int(timeout_s * 1000),
            "log_level": 0,  # no librdkafka chatter on stderr
        }
    )
    metadata = admin.list_topics(timeout=timeout_s)
    if not metadata.brokers:
        raise RuntimeError("the metadata lists no broker")
    count = len(metadata.brokers)
    return f"({count} broker{'s' if count != 1 else ''})"


_VERSION = {"postgres": _postgres, "redis": _redis, "temporal": _temporal, "kafka": _kafka}

__all__ = ["LOCAL", "engine_targets", "local_engine", "probe_engine", "shown"]
