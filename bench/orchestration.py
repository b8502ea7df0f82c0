"""Orchestration benchmark: a trivial warm ``%%wflo`` cell against raw ``docker exec``.

    python bench/orchestration.py [--rounds 40]

Needs the local stack (``wflo up``) and the runtime image. Measured in one run,
interleaved round by round so every side sees the same machine load:

- ``%%wflo`` cell: ``%%wflo`` + ``pass`` in a real kernel (jupyter_client) whose session
  is warm, from the execute request to its reply, as the analyst waits for it;
- plain cell: ``pass`` in the same kernel (the kernel's own messaging, for reference);
- ``docker exec``: ``docker exec <warm container of the runtime image> python3 -c pass``
  through the CLI, the baseline of issue #15 (target: the cell <= 1.0x);
- empty workflow: a workflow with no activities, started eagerly through a bare
  temporalio client with its worker in this process, to its result (target: the
  cell's orchestration overhead <= 1.3x);
- sandbox: ``SandboxSession.execute('pass')`` on a warm session (the agent round trip).

The cell's orchestration overhead is the ``%%wflo`` cell minus the plain cell minus
the sandbox round trip: the workflow, its activities and the ledger writes.
Writes the "## Orchestration" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile, timed, write_section
from empty_workflow import EmptyWorkflow
from jupyter_client.manager import KernelManager
from temporalio.client import Client
from temporalio.worker import Worker

from wflo_jupyter.sandbox.docker_engine import connect_docker
from wflo_jupyter.sandbox.session import SandboxSession
from wflo_jupyter.session import load_settings
from wflo_jupyter.stack.settings import resolve_endpoints

IMAGE = "wflo-runtime:python3.11"


class BareTemporal:
    """A temporalio client + worker for ``EmptyWorkflow`` on a loop thread of its own."""

    def __init__(self, address: str, namespace: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.queue = f"bench-empty-{uuid.uuid4().hex[:8]}"
        self.client: Client = self.run(Client.connect(address, namespace=namespace))
        self.worker: Worker = self.run(self._start_worker())

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(60)

    async def _start_worker(self) -> Worker:
        worker = Worker(self.client, task_queue=self.queue, workflows=[EmptyWorkflow])
        self._task = asyncio.get_running_loop().create_task(worker.run())
        return worker

    def empty_workflow(self) -> None:
        async def go() -> str:
            result: str = await self.client.execute_workflow(
                EmptyWorkflow.run,
                "ok",
                id=f"bench-empty-{uuid.uuid4().hex}",
                task_queue=self.queue,
                request_eager_start=True,
                execution_timeout=timedelta(seconds=30),
            )
            return result

        assert self.run(go()) == "ok"

    def close(self) -> None:
        self.run(self.worker.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)


class BenchKernel:
    """A python3 kernel with wflo loaded, driven through jupyter_client."""

    def __init__(self) -> None:
        sockets = tempfile.mkdtemp(prefix="wflo-bench-kernel-")
        env = {**os.environ, "WFLO_PROVIDER": "mock"}
        self.manager = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/ipc")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.cell("%load_ext wflo_jupyter")

    def cell(self, code: str) -> None:
        errors: list[str] = []

        def on_output(message: dict[str, Any]) -> None:
            if message["msg_type"] == "error":
                errors.append(message["content"]["evalue"])
            elif message["msg_type"] == "stream" and message["content"]["name"] == "stderr":
                errors.append(message["content"]["text"])

        reply = self.client.execute_interactive(
            code, timeout=120, store_history=False, output_hook=on_output
        )
        if reply["content"]["status"] != "ok" or errors:
            raise RuntimeError(f"{code!r} failed: {errors or reply['content']}")

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def measure(rounds: int) -> dict[str, list[float]]:
    settings = load_settings()
    endpoints = resolve_endpoints(settings)
    docker_client = connect_docker(os.environ.get("WFLO_DOCKER_HOST"))
    samples: dict[str, list[float]] = {
        "wflo_cell": [],
        "plain_cell": [],
        "docker_exec": [],
        "empty_workflow": [],
        "sandbox": [],
    }
    warm = docker_client.containers.run(
        IMAGE,
        ["sleep", "infinity"],
        detach=True,
        network_mode="none",
        labels={"org.wflo.role": "bench"},
    )
    sandbox = SandboxSession(docker_client, f"bench-{uuid.uuid4().hex[:8]}", image=IMAGE)
    bare = BareTemporal(endpoints.temporal_address, endpoints.temporal_namespace)
    kernel = BenchKernel()
    exec_cmd = ["docker", "exec", warm.id or "", "python3", "-c", "pass"]
    try:
        sandbox.start()
        for _ in range(5):  # warm-up: the session's sandbox, connections, caches
            kernel.cell("%%wflo\npass")
            kernel.cell("pass")
            subprocess.run(exec_cmd, check=True)
            bare.empty_workflow()
            sandbox.execute("pass")
        for _ in range(rounds):
            samples["wflo_cell"].append(timed(lambda: kernel.cell("%%wflo\npass")))
            samples["plain_cell"].append(timed(lambda: kernel.cell("pass")))
            samples["docker_exec"].append(timed(lambda: subprocess.run(exec_cmd, check=True)))
            samples["empty_workflow"].append(timed(bare.empty_workflow))
            samples["sandbox"].append(timed(lambda: sandbox.execute("pass")))
    finally:
        kernel.close()
        bare.close()
        sandbox.close()
        warm.remove(force=True)
    return samples


def render(samples: dict[str, list[float]], rounds: int) -> str:
    p50 = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    p95 = {name: percentile(values, 0.95) * 1000 for name, values in samples.items()}
    overhead = p50["wflo_cell"] - p50["plain_cell"] - p50["sandbox"]
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    labels = {
        "wflo_cell": "`%%wflo` + `pass`, warm session, in a real kernel",
        "plain_cell": "`pass` in the same kernel (kernel messaging)",
        "docker_exec": "raw `docker exec <warm container> python3 -c pass` (CLI)",
        "empty_workflow": "empty workflow, bare temporalio client, eager start",
        "sandbox": "`SandboxSession.execute('pass')`, warm (agent round trip)",
    }
    lines = [
        "## Orchestration",
        "",
        f"`python bench/orchestration.py --rounds {rounds}` — {datetime.now(UTC):%Y-%m-%d %H:%M}"
        f" UTC, {os.cpu_count()} CPUs, Docker {engine or '?'}, {platform.python_version()}, "
        f"local stack (`wflo up`), image `{IMAGE}`; {rounds} rounds, interleaved.",
        "",
        "| what | p50 | p95 |",
        "|---|---|---|",
        *(f"| {labels[name]} | {p50[name]:.1f} ms | {p95[name]:.1f} ms |" for name in labels),
        "",
        f"- trivial cell / docker exec: **{p50['wflo_cell'] / p50['docker_exec']:.2f}x** p50 "
        "(target <= 1.0x)",
        f"- orchestration overhead (cell - plain cell - sandbox): {overhead:.1f} ms p50, "
        f"**{overhead / p50['empty_workflow']:.2f}x** the empty workflow (target <= 1.3x)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    section = render(measure(args.rounds), args.rounds)
    print(section)
    if not args.no_write:
        write_section("Orchestration", section)


if __name__ == "__main__":
    main()
