"""Sandbox benchmark: the agent channel against raw ``docker exec`` / ``docker run``.

Measured in the same run, interleaved so both sides see the same machine load:

- warm: ``SandboxSession.execute("pass")`` on a started session, against
  ``docker exec <warm container> python3 -c pass`` (the CLI, as an analyst would
  compare; the SDK's exec is printed too);
- first cell: a new ``SandboxSession`` + ``execute("pass")`` (container start, agent
  handshake, one cell; the removal happens afterwards, outside the timing), against
  ``docker run --rm`` of ``python3 -c pass`` with the same hardening flags;
- ``--fresh`` cell: ``run_fresh("pass")`` (start, cell and removal), for reference.

Targets (issue 3): warm <= 0.5x docker exec, first cell <= 1.3x docker run.
Prints a table and writes the "## Sandbox" section of BENCHMARKS.md (other sections are
left as they are).

    python bench/sandbox.py [--warm N] [--first N] [--image IMAGE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import docker
from common import BENCHMARKS, percentile, timed, write_section

from wflo_jupyter.sandbox.docker_engine import connect_docker, hardened_options
from wflo_jupyter.sandbox.session import SandboxLimits, SandboxSession

ROOT = Path(__file__).resolve().parent.parent
LIMITS = SandboxLimits()


def stats(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), percentile(samples, 0.95)


def cli_flags() -> list[str]:
    """``docker run`` flags equal to ``hardened_options`` with the default limits."""
    return [
        "--network",
        "none",
        "--user",
        "1000:1000",
        "--workdir",
        "/workspace",
        "--read-only",
        "--tmpfs",
        f"/workspace:rw,size={LIMITS.workspace_size},uid=1000,gid=1000,mode=0700",
        "--tmpfs",
        f"/tmp:rw,size={LIMITS.tmp_size},uid=1000,gid=1000,mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        str(LIMITS.memory_bytes),
        "--memory-swap",
        str(LIMITS.memory_bytes),
        "--pids-limit",
        str(LIMITS.pids_limit),
        "--cpus",
        str(LIMITS.cpus),
        "--label",
        "org.wflo.role=bench",
    ]


def run(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    client = connect_docker(os.environ.get("WFLO_DOCKER_HOST"))
    results: dict[str, list[float]] = {
        "warm_execute": [],
        "docker_exec_cli": [],
        "docker_exec_sdk": [],
        "first_cell": [],
        "fresh_cell": [],
        "docker_run_cli": [],
    }
    session = SandboxSession(client, f"bench-{uuid.uuid4().hex[:8]}", image=args.image)
    warm: docker.models.containers.Container | None = None
    try:
        warm = client.containers.run(
            args.image,
            ["sleep", "infinity"],
            detach=True,
            **hardened_options(
                memory_bytes=LIMITS.memory_bytes,
                cpus=LIMITS.cpus,
                pids_limit=LIMITS.pids_limit,
                labels={"org.wflo.role": "bench"},
                environment={"HOME": "/workspace"},
            ),
        )
        session.start()
        for _ in range(20):  # warm-up: imports, page cache, the engine's exec path
            session.execute("pass")
        subprocess.run(["docker", "exec", warm.id or "", "python3", "-c", "pass"], check=True)

        for i in range(args.warm):
            results["warm_execute"].append(timed(lambda: session.execute("pass")))
            if i % max(1, args.warm // args.exec_samples) == 0:
                results["docker_exec_cli"].append(
                    timed(
                        lambda: subprocess.run(
                            ["docker", "exec", warm.id or "", "python3", "-c", "pass"],
                            check=True,
                        )
                    )
                )
                results["docker_exec_sdk"].append(
                    timed(lambda: warm.exec_run(["python3", "-c", "pass"]))  # type: ignore[union-attr]
                )

        run_cmd = ["docker", "run", "--rm", *cli_flags(), args.image, "python3", "-c", "pass"]
        subprocess.run(run_cmd, check=True)
        for _ in range(args.first):
            first = SandboxSession(client, f"bench-{uuid.uuid4().hex[:8]}", image=args.image)
            try:
                started = time.perf_counter()
                result = first.execute("pass")
                results["first_cell"].append(time.perf_counter() - started)
                assert result.ok, result.error_line
            finally:
                first.close()
            results["docker_run_cli"].append(timed(lambda: subprocess.run(run_cmd, check=True)))
            results["fresh_cell"].append(timed(lambda: session.run_fresh("pass")))
    finally:
        session.close()
        if warm is not None:
            warm.remove(force=True)
    return {name: stats(samples) for name, samples in results.items()}


def render(figures: dict[str, tuple[float, float]], args: argparse.Namespace) -> str:
    def ms(name: str) -> str:
        p50, p95 = figures[name]
        return f"{p50 * 1000:.2f} ms | {p95 * 1000:.2f} ms"

    warm_ratio = figures["warm_execute"][0] / figures["docker_exec_cli"][0]
    warm_sdk_ratio = figures["warm_execute"][0] / figures["docker_exec_sdk"][0]
    first_ratio = figures["first_cell"][0] / figures["docker_run_cli"][0]
    first_p95_ratio = figures["first_cell"][1] / figures["docker_run_cli"][1]
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        "## Sandbox",
        "",
        f"`python bench/sandbox.py` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Docker {engine or '?'}, {platform.python_version()}, "
        f"image `{args.image}`; {args.warm} warm cells, {args.exec_samples} docker execs, "
        f"{args.first} first cells / docker runs, interleaved.",
        "",
        "| what | p50 | p95 |",
        "|---|---|---|",
        f"| warm `%%wflo` cell: `SandboxSession.execute('pass')` | {ms('warm_execute')} |",
        f"| raw `docker exec <warm container> python3 -c pass` (CLI) | {ms('docker_exec_cli')} |",
        f"| raw exec via the docker SDK (`exec_run`) | {ms('docker_exec_sdk')} |",
        f"| first cell: new session + `execute('pass')` | {ms('first_cell')} |",
        f"| `--fresh` cell: `run_fresh('pass')`, removal included | {ms('fresh_cell')} |",
        f"| raw `docker run --rm` same flags `python3 -c pass` (CLI) | {ms('docker_run_cli')} |",
        "",
        f"- warm / docker exec: **{warm_ratio:.4f}x** p50 (target <= 0.5x; "
        f"{warm_sdk_ratio:.4f}x against the SDK's exec)",
        f"- first cell / docker run: **{first_ratio:.2f}x** p50, {first_p95_ratio:.2f}x p95 "
        "(target <= 1.3x); the first cell's container stays up for the next cells, so its "
        "removal is outside the timing; `--fresh` pays it: "
        f"{figures['fresh_cell'][0] / figures['docker_run_cli'][0]:.2f}x p50",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--exec-samples", type=int, default=30)
    parser.add_argument("--first", type=int, default=15)
    parser.add_argument(
        "--image", default=os.environ.get("WFLO_RUNTIME_IMAGE", "wflo-runtime:python3.11")
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    section = render(run(args), args)
    print(section)
    if not args.no_write:
        write_section("Sandbox", section)
        print(f"updated {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
