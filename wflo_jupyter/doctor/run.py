"""``run_doctor``: every probe at once, each bounded by the timeout, then the findings in
the table's order (sandbox, image, engines, host) and the verdict. A probe that has not
answered by the deadline is reported as not answering; its thread is left to finish on
its own client timeout (nothing waits for it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import TypeVar

from wflo_jupyter.core.doctor import DoctorReport, Finding
from wflo_jupyter.core.doctor_rules import (
    BwrapSeen,
    DockerSeen,
    EngineSeen,
    ImageSeen,
    engine_finding,
    image_finding,
    sandbox_findings,
)
from wflo_jupyter.doctor.engines import engine_targets, local_engine, probe_engine
from wflo_jupyter.doctor.host import host_findings
from wflo_jupyter.doctor.sandbox import docker_address, probe_bwrap, probe_docker, probe_image
from wflo_jupyter.runtime.recipe import BUILD_COMMAND
from wflo_jupyter.stack.settings import Settings

DEFAULT_TIMEOUT_S = 5.0
GRACE_S = 1.0  # beyond the timeout: a client's own timeout may end a little late
T = TypeVar("T")


def _docker_and_image(settings: Settings, timeout_s: float) -> tuple[DockerSeen, ImageSeen | None]:
    docker, client = probe_docker(settings.docker_host, timeout_s)
    if client is None:
        return docker, None
    try:
        return docker, probe_image(client, settings.runtime_image)
    finally:
        client.close()


def run_doctor(
    settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S, version: str = ""
) -> DoctorReport:
    """Look at everything ``settings`` points at; nothing is started or changed."""
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wflo-doctor")
    deadline = time.monotonic() + timeout_s + GRACE_S
    try:
        sandbox = pool.submit(_docker_and_image, settings, timeout_s)
        bwrap = pool.submit(probe_bwrap)
        targets = engine_targets(settings)
        engines = {
            engine: pool.submit(probe_engine, engine, address, source, shown or address, timeout_s)
            for engine, address, source, shown in targets
            if address is not None
        }
        host = host_findings(settings.home)
        pending: list[Future[object]] = [sandbox, bwrap, *engines.values()]  # type: ignore[list-item]
        wait_for(pending, timeout=max(0.0, deadline - time.monotonic()))
        late = f"no answer within {timeout_s:g} s"
        docker_seen, image_seen = _result(
            sandbox, lambda: (DockerSeen(docker_address(settings.docker_host), error=late), None)
        )
        bwrap_seen = _result(
            bwrap, lambda: BwrapSeen(False, f"its probe took longer than {timeout_s:g} s")
        )
        findings: list[Finding] = sandbox_findings(settings.isolation, docker_seen, bwrap_seen)
        if settings.isolation in ("bubblewrap", "unisolated"):
            findings.append(
                image_finding(
                    None, BUILD_COMMAND, why_not=f"not used: WFLO_ISOLATION={settings.isolation}"
                )
            )
        else:
            findings.append(image_finding(image_seen, BUILD_COMMAND))
        for engine, _address, source, shown in targets:
            future = engines.get(engine)
            seen = EngineSeen(engine, shown, source, error=late)
            if future is None:
                seen = local_engine(engine)
            elif future.done():
                seen = future.result()
            findings.append(engine_finding(seen))
        findings.extend(host)
        return DoctorReport(tuple(findings), version=version)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future: Future[T], late: Callable[[], T]) -> T:
    """The probe's answer, or ``late()`` when it has not answered yet."""
    if not future.done():
        return late()
    return future.result()


__all__ = ["DEFAULT_TIMEOUT_S", "run_doctor"]
