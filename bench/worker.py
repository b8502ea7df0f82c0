"""Remote worker benchmark: a step on a ``wflo worker`` against the same step in the
kernel's own worker, and the output channel against raw Redis pub/sub.

    python bench/worker.py [--rounds 30] [--messages 2000]

Engines: the ``WFLO_*`` settings when set, else the local stack (started on demand). A
``wflo worker`` process is started on a private task queue (its own ``WFLO_HOME``).

- **cell**: a trivial warm ``%%wflo`` cell (``pass``) in a real kernel, end to end, local
  vs ``--queue`` (interleaved rounds).
- **first output**: a cell prints ``time.time()`` and sleeps; the time from that print (the
  sandbox's clock, the same host) until the kernel's client receives the stream message,
  local vs ``--queue``.
- **channel**: ``StepOutputChannel`` publish -> delivery callback, against a raw
  ``redis-py`` pub/sub publish -> ``get_message`` on the same server (the baseline).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import percentile, timed, write_section
from orchestration import BenchKernel

from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.cache.step_output import StepOutputChannel
from wflo_jupyter.session import load_settings
from wflo_jupyter.stack.settings import resolve_endpoints

WFLO = str(Path(sys.executable).with_name("wflo"))


def start_worker(queue: str, env: dict[str, str]) -> subprocess.Popen[str]:
    home = tempfile.mkdtemp(prefix="wflo-bench-worker-")
    process = subprocess.Popen(
        [WFLO, "worker", "--task-queue", queue],
        env={**env, "WFLO_HOME": home, "WFLO_PROVIDER": "mock"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = ""
    while "serving task queue" not in seen:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError(f"wflo worker did not start: {seen}")
        seen += line
    return process


def first_output_delay(kernel: BenchKernel, header: str) -> float:
    """Seconds from the sandbox's print to the kernel client's receipt of it."""
    code = f"{header}\nimport time\nprint(repr(time.time()), flush=True)\ntime.sleep(0.2)"
    arrivals: list[tuple[float, str]] = []

    def on_output(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream" and not arrivals:
            arrivals.append((time.time(), message["content"]["text"]))

    reply = kernel.client.execute_interactive(
        code, timeout=120, store_history=False, output_hook=on_output
    )
    if reply["content"]["status"] != "ok" or not arrivals:
        raise RuntimeError(f"{header}: {reply['content']}")
    received, text = arrivals[0]
    return received - float(text.split()[0])


def channel_latency(redis_url: str, messages: int) -> dict[str, list[float]]:
    client = connect_redis(redis_url)
    samples: dict[str, list[float]] = {"channel": [], "raw_pubsub": []}
    try:
        # ours: publisher -> subscription thread -> deliver callback
        step_id = str(uuid.uuid4())
        got: list[float] = []
        done = threading.Event()

        def deliver(event: tuple[Any, ...]) -> None:
            got.append(time.perf_counter() - float(event[2]))
            if len(got) == messages:
                done.set()

        channel = StepOutputChannel(client)
        subscription = channel.subscribe(step_id, deliver)
        publisher = channel.publisher(step_id)
        for _ in range(messages):
            publisher.publish("stream", "stdout", repr(time.perf_counter()))
            time.sleep(0.0005)
        done.wait(30)
        subscription.close()
        samples["channel"] = got
        # baseline: raw pub/sub, the same pacing, read by a thread with get_message
        raw = client.pubsub(ignore_subscribe_messages=True)
        name = f"bench-raw-{uuid.uuid4().hex}"
        raw.subscribe(name)
        while raw.get_message(timeout=1) is None and not raw.subscribed:
            pass
        received: list[float] = []

        def read() -> None:
            while len(received) < messages:
                message = raw.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    received.append(time.perf_counter() - float(message["data"]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.2)
        for _ in range(messages):
            client.publish(name, repr(time.perf_counter()))
            time.sleep(0.0005)
        reader.join(30)
        raw.close()
        samples["raw_pubsub"] = received
    finally:
        client.close()
    return samples


def measure(rounds: int, messages: int) -> dict[str, list[float]]:
    settings = load_settings()
    endpoints = resolve_endpoints(settings)
    env = {
        **os.environ,
        "WFLO_DATABASE_URL": endpoints.database_url,
        "WFLO_REDIS_URL": endpoints.redis_url or "",
        "WFLO_TEMPORAL_ADDRESS": endpoints.temporal_address,
    }
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, env)
    os.environ.update({k: v for k, v in env.items() if k.startswith("WFLO_")})
    kernel = BenchKernel()
    samples: dict[str, list[float]] = {
        "local_cell": [],
        "remote_cell": [],
        "local_first_output": [],
        "remote_first_output": [],
    }
    try:
        for _ in range(3):  # warm-up: both sandboxes, connections
            kernel.cell("%%wflo\npass")
            kernel.cell(f"%%wflo --queue {queue}\npass")
        for _ in range(rounds):
            samples["local_cell"].append(timed(lambda: kernel.cell("%%wflo\npass")))
            samples["remote_cell"].append(
                timed(lambda: kernel.cell(f"%%wflo --queue {queue}\npass"))
            )
            samples["local_first_output"].append(first_output_delay(kernel, "%%wflo"))
            samples["remote_first_output"].append(
                first_output_delay(kernel, f"%%wflo --queue {queue}")
            )
    finally:
        kernel.close()
        worker.terminate()
        worker.wait(60)
    samples.update(channel_latency(endpoints.redis_url or "", messages))
    return samples


def render(samples: dict[str, list[float]], rounds: int, messages: int) -> str:
    p50 = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    p95 = {name: percentile(v, 0.95) * 1000 for name, v in samples.items()}
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("local_cell", "`%%wflo` + `pass`, warm, the kernel's own worker (baseline)"),
        ("remote_cell", "`%%wflo --queue Q` + `pass`, warm, a `wflo worker` process"),
        ("local_first_output", "print in the sandbox -> kernel client, local (baseline)"),
        ("remote_first_output", "print in the sandbox -> kernel client, via the worker"),
        ("raw_pubsub", "raw Redis pub/sub publish -> get_message (baseline)"),
        ("channel", "`StepOutputChannel` publish -> deliver"),
    ]
    table = "\n".join(
        f"| {label} | {p50[name]:.2f} ms | {p95[name]:.2f} ms |" for name, label in rows
    )

    def ratio(name: str, base: str) -> str:
        return f"**{p50[name] / p50[base]:.2f}x** p50, {p95[name] / p95[base]:.2f}x p95"

    return f"""## Remote worker

`python bench/worker.py --rounds {rounds} --messages {messages}` — {when}, {os.cpu_count()} CPUs, \
Python {platform.python_version()}; a `wflo worker` process on the same machine, its own \
`WFLO_HOME`; cells interleaved.

| what | p50 | p95 |
|---|---|---|
{table}

- remote cell / local cell: {ratio("remote_cell", "local_cell")}
- remote first output / local first output: {ratio("remote_first_output", "local_first_output")}
- output channel / raw pub/sub: {ratio("channel", "raw_pubsub")}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    section = render(measure(args.rounds, args.messages), args.rounds, args.messages)
    print(section)
    if not args.no_write:
        write_section("Remote worker", section)


if __name__ == "__main__":
    main()
