"""Kernel start-up benchmark: what ``%load_ext wflo_jupyter`` adds to a kernel's start.

    python bench/startup.py [--rounds 10]

Each round starts two fresh python3 kernels (jupyter_client, IPC transport), in
alternating order: one runs ``pass`` as its first cell, the other runs
``%load_ext wflo_jupyter``. Time from starting the kernel to that first cell's reply
(the analyst's first prompt back). The extension's cost is the difference of the
medians, and its own cell time (the first cell's reply minus the kernel-ready time)
is reported too. Target of issue #12: <= 300 ms added. The sandbox pre-warm that
``%load_ext`` starts runs in a background thread and is not waited for (as in a
notebook); ``WFLO_ISOLATION=unisolated`` keeps Docker out of the measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_client.manager import KernelManager


def first_prompt(code: str) -> tuple[float, float]:
    """(start -> first cell's reply, kernel ready -> first cell's reply), in seconds."""
    sockets = tempfile.mkdtemp(prefix="wflo-bench-kernel-")
    env = {**os.environ, "WFLO_ISOLATION": "unisolated", "WFLO_PROVIDER": "mock"}
    manager = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets}/ipc")
    started = time.perf_counter()
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        ready = time.perf_counter()
        reply = client.execute_interactive(code, timeout=60, store_history=False)
        done = time.perf_counter()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content']}")
        return done - started, done - ready
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    plain: list[tuple[float, float]] = []
    loaded: list[tuple[float, float]] = []
    first_prompt("pass")  # warm the file system caches once, unmeasured
    for round_ in range(args.rounds):
        order = [("pass", plain), ("%load_ext wflo_jupyter", loaded)]
        for code, into in order if round_ % 2 == 0 else reversed(order):
            into.append(first_prompt(code))
    base = statistics.median(t for t, _ in plain) * 1000
    with_ext = statistics.median(t for t, _ in loaded) * 1000
    cell_base = statistics.median(c for _, c in plain) * 1000
    cell_ext = statistics.median(c for _, c in loaded) * 1000
    added = with_ext - base
    print(f"bench/startup.py: {args.rounds} rounds, medians (ms)")
    print(f"{'first cell':<28} {'start -> reply':>15} {'cell alone':>11}")
    print(f"{'pass (baseline)':<28} {base:15.1f} {cell_base:11.1f}")
    print(f"{'%load_ext wflo_jupyter':<28} {with_ext:15.1f} {cell_ext:11.1f}")
    verdict = "ok" if added <= 300 else "OVER 300 ms"
    print(f"added by the extension: {added:.1f} ms ({with_ext / base:.2f}x)  {verdict}")


if __name__ == "__main__":
    main()
