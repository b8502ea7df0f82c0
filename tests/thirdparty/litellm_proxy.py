"""LiteLLM's proxy as a third-party OpenAI-compatible server: started from its own
environment (``.venv-litellm``, ``make litellm-venv``), offline (every model answers with
LiteLLM's own ``mock_response``; no database, no telemetry, the bundled cost map), on a
free loopback port, its output logged to a file whose tail any failure shows.

What the proxy did is read from two things it writes itself: its access log (one line per
HTTP request it received, whatever the answer) and ``record_calls.py``, a LiteLLM callback
that writes the usage and cost LiteLLM reported for each call it answered."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
# A relative WFLO_LITELLM_VENV is relative to the repository, not to the proxy's cwd.
VENV = REPO / os.environ.get("WFLO_LITELLM_VENV", ".venv-litellm")
MASTER_KEY = "sk-litellm-master-key"
CHAT_REPLY = "Hello from LiteLLM."
EMBEDDING = [0.25, -0.5, 1.0]

CONFIG = f"""\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-never-used
      mock_response: "{CHAT_REPLY}"
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: sk-never-used
      mock_response: {json.dumps(EMBEDDING)}
general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  telemetry: false
  callbacks: record_calls.recorder
"""


class LiteLLMProxy:
    """One running ``litellm --config ... --port N``; ``close()`` stops it."""

    def __init__(self, directory: Path, *, start_timeout: float = 120.0) -> None:
        executable = VENV / "bin" / "litellm"
        if not executable.is_file():
            pytest.fail(f"{executable} is missing: run `make litellm-venv` (`make test` does)")
        self.directory = directory
        self.log_path = directory / "proxy.log"
        self.record_path = directory / "calls.jsonl"
        (directory / "config.yaml").write_text(CONFIG, encoding="utf-8")
        (directory / "record_calls.py").write_text(
            (Path(__file__).parent / "record_calls.py").read_text(encoding="utf-8"),
            encoding="utf-8",
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        env = {
            "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
            "HOME": str(directory),
            "LANG": "C.UTF-8",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the remote cost map
            "WFLO_LITELLM_RECORD": str(self.record_path),
        }
        argv = [str(executable), "--config", "config.yaml", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--num_workers", "1"]
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready(start_timeout)
        self.start_seconds = time.monotonic() - started
        self.rss_mib = self._rss_mib()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                pytest.fail(f"LiteLLM's proxy exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        pytest.fail(f"LiteLLM's proxy did not answer within {timeout:g} s:\n{self.tail()}")

    def _rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the proxy printed."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def requests(self, path: str) -> int:
        """How many HTTP requests to ``path`` the proxy has received (its access log)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text.count(f'"POST {path} HTTP/1.1"')

    def calls(self) -> list[dict[str, Any]]:
        """The calls LiteLLM answered, as its callback recorded them (``record_calls.py``)."""
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
