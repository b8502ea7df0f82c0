"""``WfloSession``: one per kernel. Wires the stack's engines to the adapters and runs
steps. Engines are connected lazily, on the first step, so ``%load_ext`` is instant
and a missing engine is reported on the cell that needed it."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from wflo_jupyter.core.steps import StepInput, StepResult, StepSpec
from wflo_jupyter.ledger.models import StepRow
from wflo_jupyter.stack.settings import Endpoints, Settings, resolve_endpoints


class WfloSession:
    """The kernel's wflo state: engines, the step runner, the outbox relay."""

    def __init__(
        self,
        settings: Settings,
        *,
        kernel_id: str | None = None,
        notebook_path: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.session_id = str(uuid.uuid4())
        self.kernel_id = kernel_id
        self.notebook_path = notebook_path
        self.progress = progress or (lambda _msg: None)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        # Typed handles, set by ``start``.
        from wflo_jupyter.events.relay import OutboxRelay
        from wflo_jupyter.ledger.store import Ledger
        from wflo_jupyter.orchestration.loop import BackgroundLoop
        from wflo_jupyter.orchestration.worker import StepRunner

        self.endpoints: Endpoints | None = None
        self.ledger: Ledger | None = None
        self.runner: StepRunner | None = None
        self.relay: OutboxRelay | None = None
        self.loop: BackgroundLoop | None = None

    @property
    def task_queue(self) -> str:
        return f"wflo-session-{self.session_id}"

    def start(self) -> None:
        """Connect every engine (idempotent); raises one-line ``WfloError``s."""
        with self._lock:
            if self._started:
                return
            from wflo_jupyter.events.relay import OutboxRelay
            from wflo_jupyter.ledger.store import Ledger
            from wflo_jupyter.orchestration.activities import StepActivities
            from wflo_jupyter.orchestration.loop import BackgroundLoop
            from wflo_jupyter.orchestration.worker import StepRunner
            from wflo_jupyter.sandbox.docker_runner import DockerSandbox, connect_docker

            endpoints = resolve_endpoints(self.settings, progress=self.progress)
            docker_client = connect_docker(endpoints.docker_host)
            ledger = Ledger.connect(endpoints.database_url)
            ledger.open_session(
                self.session_id,
                kernel_id=self.kernel_id,
                notebook_path=self.notebook_path,
                user_name=getpass.getuser(),
                hostname=socket.gethostname(),
                pid=os.getpid(),
            )
            relay = (
                OutboxRelay(ledger, endpoints.kafka_bootstrap)
                if endpoints.kafka_bootstrap
                else None
            )
            activities = StepActivities(
                ledger,
                DockerSandbox(docker_client, self.session_id),
                on_change=relay.wake if relay else None,
            )
            loop = BackgroundLoop()
            try:
                runner = StepRunner(
                    loop,
                    endpoints.temporal_address,
                    endpoints.temporal_namespace,
                    self.task_queue,
                    activities,
                )
            except Exception:
                loop.stop()
                ledger.close()
                raise
            if relay is not None:
                relay.start()
            self.endpoints, self.ledger, self.runner, self.relay, self.loop = (
                endpoints,
                ledger,
                runner,
                relay,
                loop,
            )
            self._started = True

    def run_step(self, spec: StepSpec) -> StepResult:
        """Run one cell as a durable step and return its result."""
        self.start()
        assert self.runner is not None
        step_id = str(uuid.uuid4())
        step = StepInput(
            step_id=step_id,
            session_id=self.session_id,
            code=spec.code,
            name=spec.name or f"cell-{step_id[:8]}",
            timeout_s=spec.timeout_s,
            memory_bytes=spec.memory_bytes,
            cpus=spec.cpus,
            pids_limit=spec.pids_limit,
            image=spec.image,
            budget_micros=spec.budget_micros,
            retries=spec.retries,
        )
        started = time.monotonic()
        result = self.runner.run(step, timeout_s=(spec.timeout_s + 90) * (spec.retries + 1))
        result.duration_s = time.monotonic() - started
        return result

    def steps(self) -> Sequence[StepRow]:
        """This session's steps, in order."""
        self.start()
        assert self.ledger is not None
        return self.ledger.steps(self.session_id)

    def events(self, limit: int = 20, all_sessions: bool = False) -> list[dict[str, Any]]:
        """The newest event envelopes of this session (or of every session)."""
        self.start()
        assert self.ledger is not None
        return self.ledger.recent_events(limit, None if all_sessions else self.session_id)

    def restart_sandbox(self) -> None:
        """Drop the sandbox state (each cell runs in a fresh container for now)."""
        self.start()

    def close(self) -> None:
        """Stop the worker, relay and loop thread; close connections (idempotent)."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True
            try:
                if self.runner is not None:
                    self.runner.close()
            finally:
                if self.relay is not None:
                    self.relay.stop()
                if self.ledger is not None:
                    with contextlib.suppress(Exception):
                        self.ledger.close_session(self.session_id)
                    self.ledger.close()
                if self.loop is not None:
                    self.loop.stop()
