"""``WfloSession``: one per kernel. Wires the stack's engines to the adapters, owns the
kernel's sandboxes (through ``KernelSandboxes``), runs steps, and answers the notebook
layer's questions (steps, events, budgets and their live feed, cache statistics and
clears, engine status) with ``core`` value types.

Engines are connected lazily, on the first step, so ``%load_ext`` is instant and a
missing engine is reported on the cell that needed it; the sandbox container alone is
pre-warmed in the background after ``%load_ext``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.budget import BudgetNotFound
from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.core.reports import OutputEvent, StepSummary
from wflo_jupyter.core.steps import StepInput, StepResult, StepSpec
from wflo_jupyter.orchestration.stepio import Ask, StepIO, StepIORegistry
from wflo_jupyter.session.queries import SessionQueries
from wflo_jupyter.session.sandboxes import KernelSandboxes
from wflo_jupyter.stack.settings import Endpoints, Settings, resolve_endpoints

if TYPE_CHECKING:
    from wflo_jupyter.cache.llm_cache import LlmCache
    from wflo_jupyter.events.relay import OutboxRelay
    from wflo_jupyter.gateway.service import LlmGateway
    from wflo_jupyter.ledger.budgets import BudgetLedger
    from wflo_jupyter.ledger.store import Ledger
    from wflo_jupyter.orchestration.loop import BackgroundLoop
    from wflo_jupyter.orchestration.worker import StepRunner
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)

LlmHandler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]
LlmFastPath = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]

NO_LIMIT_MICROS = 10**15  # a notebook budget nobody set: record spending, refuse nothing


def _log_cancel_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.warning("cancelling the step's workflow failed: %s", error)


def load_settings() -> Settings:
    """The ``WFLO_*`` settings of this process (``ConfigError``, one line, when bad)."""
    return Settings.from_env()


class WfloSession(SessionQueries):
    """The kernel's wflo state: engines, sandbox containers, the step runner, the relay."""

    def __init__(
        self,
        settings: Settings,
        *,
        kernel_id: str | None = None,
        notebook_path: str | None = None,
        progress: Callable[[str], None] | None = None,
        idle_timeout_s: float = 1800.0,
    ) -> None:
        self.settings = settings
        self.session_id = str(uuid.uuid4())
        self.kernel_id = kernel_id
        self.notebook_path = notebook_path
        self.progress = progress or (lambda _msg: None)
        self.idle_timeout_s = idle_timeout_s
        self.step_io = StepIORegistry()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self.sandboxes = KernelSandboxes(
            self.session_id,
            isolation=settings.isolation,
            docker_host=settings.docker_host,
            idle_timeout_s=idle_timeout_s,
        )
        self.endpoints: Endpoints | None = None
        self.ledger: Ledger | None = None
        self.runner: StepRunner | None = None
        self.relay: OutboxRelay | None = None
        self.loop: BackgroundLoop | None = None
        self.budgets: BudgetLedger | None = None
        self.gateway: LlmGateway | None = None
        self.cache: LlmCache | None = None
        self.teams: list[str] = []
        self.compute_price_micros = 0
        self.confirm_above_micros: int | None = None  # %config WfloMagics.confirm_above
        self.price_overrides: dict[str, Any] = {}
        self._noted: set[str] = set()
        self._note_sink: Callable[[str], None] | None = None
        self._attempts: dict[int, int] = {}  # execution count -> steps started for it

    @property
    def task_queue(self) -> str:
        return f"wflo-session-{self.session_id}"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def notebook_key(self) -> str:
        """The notebook budget's key: the notebook's path when known, else the session."""
        return self.notebook_path or self.session_id

    # -- sandbox containers -----------------------------------------------------------------
    def sandbox_for(self, image: str) -> SandboxSession:
        """The kernel's persistent sandbox for ``image`` (created on demand)."""
        return self.sandboxes.sandbox_for(image)

    def prewarm(self, image: str) -> threading.Thread:
        """Start the sandbox for ``image`` in the background."""
        return self.sandboxes.prewarm(image)

    def restart_sandbox(self) -> None:
        """Replace every sandbox container of this session (their state is dropped)."""
        self.sandboxes.restart()

    def interrupt(self) -> None:
        """Interrupt the cell running in any of this session's sandboxes."""
        self.sandboxes.interrupt()

    def sandbox_ids(self) -> list[str]:
        """The running sandboxes' ids (container ids, ``bwrap-<pid>``, ...)."""
        return self.sandboxes.ids()

    # -- engines ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect every engine (idempotent); raises one-line ``WfloError``s."""
        with self._lock:
            if self._started:
                return
            from wflo_jupyter.events.relay import OutboxRelay
            from wflo_jupyter.ledger.budgets import BudgetLedger
            from wflo_jupyter.ledger.store import Ledger
            from wflo_jupyter.orchestration.activities import StepActivities
            from wflo_jupyter.orchestration.loop import BackgroundLoop
            from wflo_jupyter.orchestration.worker import StepRunner

            endpoints = resolve_endpoints(self.settings, progress=self.progress)
            if self.sandboxes.isolation() == "docker":
                self.sandboxes.docker_client()
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
            budgets = BudgetLedger(ledger.engine)
            try:
                budgets.state("notebook", self.notebook_key)
            except BudgetNotFound:
                budgets.set_budget("notebook", self.notebook_key, NO_LIMIT_MICROS)
            from wflo_jupyter.gateway.wiring import build_gateway

            self.gateway, self.cache = build_gateway(
                budgets,
                home=self.settings.home,
                redis_url=endpoints.redis_url,
                simulated=self.settings.provider == "mock",
                price_overrides=self.price_overrides,
                on_missing=self._note_once,
            )
            activities = StepActivities(
                ledger,
                self.sandbox_for,
                self.step_io,
                on_change=relay.wake if relay else None,
                budgets=budgets,
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
            self.sandboxes.ensure_watchdog()
            self.endpoints, self.ledger, self.runner, self.relay, self.loop = (
                endpoints,
                ledger,
                runner,
                relay,
                loop,
            )
            self.budgets = budgets
            self._started = True

    # -- steps ------------------------------------------------------------------------------
    def run_step(
        self,
        spec: StepSpec,
        inputs: dict[str, Any] | None = None,
        on_event: Callable[[OutputEvent], None] | None = None,
        ask: Ask | None = None,
        execution_count: int | None = None,
    ) -> tuple[StepResult, StepIO]:
        """Run one cell as a durable step. ``on_event`` is called on THIS thread for each
        output event as it arrives (the kernel's main thread, so output lands in the cell);
        ``ask`` puts an LLM call above ``confirm_above_micros`` to the analyst, also here.

        ``spec.estimate``: a dry run in a throwaway sandbox, not recorded in the ledger;
        its calls are priced into ``io.estimate`` and answered with placeholders.

        ``execution_count`` (the notebook's) names the workflow, one per cell execution.
        An interrupt (KeyboardInterrupt on this thread) cancels the step: its workflow is
        cancelled, the cell interrupted, its LLM calls cut off; the result says
        ``cancelled``. A second interrupt stops waiting."""
        self.start()
        assert self.runner is not None
        step_id = str(uuid.uuid4())
        dry = spec.estimate
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
            retries=0 if dry else spec.retries,
            notebook_key=self.notebook_key,
            teams=list(self.teams),
            compute_price_micros=self.compute_price_micros,
            estimate=dry,
            execution_count=execution_count,
            submit_attempt=self._submit_attempt(execution_count),
        )
        io = self.step_io.open(
            step_id,
            StepIO(
                inputs=dict(inputs or {}),
                outputs=() if dry else spec.outputs,  # a dry run's values stay out
                fresh=spec.fresh or dry,
            ),
        )
        if dry:
            io.estimate = EstimateTally()
            io.llm_handler, io.llm_fast_path = self.estimate_handlers(io.estimate, spec.no_cache)
        else:
            io.llm_handler, io.llm_fast_path = self.llm_handlers(step, io, spec.no_cache)
            io.llm_drain = self.gateway.drain if self.gateway is not None else None
        if self.gateway is not None:
            gateway = self.gateway
            io.llm_cancel = lambda: gateway.cancel_step(step_id)
        self._note_sink = io.notice
        if not dry:
            self.meter_step = (step_id, step.name)
        deliver = on_event or (lambda _event: None)
        started = time.monotonic()
        future = self.runner.submit(step)
        try:
            interrupted = False
            while True:
                try:
                    io.pump(deliver, ask, wait_s=0.05)
                    if future.done():
                        io.pump(deliver, ask, wait_s=0)
                        break
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True  # stop the cell; its result still gets recorded
                    self._cancel(step, io)
            result = self._result(step, io, future)
        finally:
            self._note_sink = None
            io.close()
            self.step_io.close(step_id)
            self.refresh_meters()
        result.duration_s = time.monotonic() - started
        return result, io

    def _submit_attempt(self, execution_count: int | None) -> int:
        """How many steps this session started for ``execution_count``, this one included
        (more than one when a cell runs without storing history)."""
        if execution_count is None:
            return 1
        attempt = self._attempts.get(execution_count, 0) + 1
        self._attempts[execution_count] = attempt
        return attempt

    def _cancel(self, step: StepInput, io: StepIO) -> None:
        """The analyst interrupted the cell: cancel its workflow (recorded by Temporal) and
        stop it here at once (in-process worker: no wait for a heartbeat)."""
        assert self.runner is not None
        cancelling = self.runner.cancel(step.workflow_id)
        cancelling.add_done_callback(_log_cancel_failure)
        io.cancel()

    def _result(self, step: StepInput, io: StepIO, future: Future[StepResult]) -> StepResult:
        from wflo_jupyter.orchestration.worker import CancelledStep

        assert self.runner is not None
        try:
            return self.runner.result(future)
        except CancelledStep:
            result = StepResult.of_cancel(step.step_id, state_lost=io.state_lost)
            result.workflow_id = step.workflow_id
            return result

    def steps(self) -> list[StepSummary]:
        """This session's steps, in order."""
        self.start()
        assert self.ledger is not None
        return [
            StepSummary(
                step_id=row.id,
                seq=row.seq,
                name=row.name,
                status=row.status,
                exit_reason=row.exit_reason,
                duration_ms=row.duration_ms,
                cost_micros=row.cost_micros,
                workflow_id=row.workflow_id,
            )
            for row in self.ledger.steps(self.session_id)
        ]

    def status_rows(self) -> list[tuple[str, str]]:
        """(engine, where) for ``%wflo status``: each engine's address, the image, the id."""
        self.start()
        endpoints = self.endpoints
        assert endpoints is not None
        return [
            ("postgres", endpoints.database_url.split("@")[-1]),
            ("temporal", endpoints.temporal_address),
            ("redis", endpoints.redis_url or "not configured"),
            ("kafka", endpoints.kafka_bootstrap or "not configured (events stay in the outbox)"),
            ("docker", endpoints.docker_host or "local engine"),
            ("image", endpoints.runtime_image),
            ("session", self.session_id),
        ]

    def events(self, limit: int = 20, all_sessions: bool = False) -> list[dict[str, Any]]:
        """The newest event envelopes of this session (or of every session)."""
        self.start()
        assert self.ledger is not None
        return self.ledger.recent_events(limit, None if all_sessions else self.session_id)

    # -- LLM calls ----------------------------------------------------------------------------
    def _note_once(self, text: str) -> None:
        """A one-line notice shown once per session (e.g. a missing tokenizer)."""
        if text in self._noted:
            return
        self._noted.add(text)
        sink = self._note_sink
        if sink is not None:
            sink(text)
        else:
            log.warning("%s", text)

    def set_price_overrides(self, overrides: dict[str, Any]) -> None:
        """``%config WfloMagics.prices``: used for the next calls (ConfigError if bad)."""
        if overrides == self.price_overrides:
            return
        if self.gateway is not None:
            self.gateway.prices.set_overrides(overrides or None)
        self.price_overrides = dict(overrides)

    def llm_handlers(
        self, step: StepInput, io: StepIO, no_cache: bool
    ) -> tuple[LlmHandler, LlmFastPath]:
        """What the sandbox calls for each ``llm_request`` frame of ``step``'s cell."""
        from wflo_jupyter.gateway.wiring import step_handlers

        assert self.gateway is not None
        handle, fast = step_handlers(
            self.gateway,
            step_id=step.step_id,
            scopes=step.budget_scopes(),
            no_cache=no_cache,
            notice=io.notice,
            origin=self.notebook_key,
            confirm_above_micros=self.confirm_above_micros,
            confirm=io.ask,
        )

        def counted(frame: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
            io.llm_requests += 1
            handle(frame, send)

        def counted_fast(frame: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> bool:
            answered = fast(frame, send)
            if answered:
                io.llm_requests += 1
            return answered

        return counted, counted_fast

    def estimate_handlers(
        self, tally: EstimateTally, no_cache: bool
    ) -> tuple[LlmHandler, LlmFastPath]:
        """What a ``--estimate`` dry run's sandbox calls for each ``llm_request`` frame."""
        from wflo_jupyter.gateway.wiring import estimate_handlers

        assert self.gateway is not None
        return estimate_handlers(self.gateway, tally, no_cache=no_cache)

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, relay, loop and watchdog; remove the sandbox containers; close
        connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.close_meters()
            try:
                if self.runner is not None:
                    self.runner.close()
            finally:
                if self.gateway is not None:
                    with contextlib.suppress(Exception):
                        self.gateway.close()
                if self.cache is not None:
                    with contextlib.suppress(Exception):
                        self.cache.close()
                        self.cache.client.close()
                if self.relay is not None:
                    self.relay.stop()
                if self.ledger is not None:
                    with contextlib.suppress(Exception):
                        self.ledger.close_session(self.session_id)
                    self.ledger.close()
                if self.loop is not None:
                    self.loop.stop()
                self.sandboxes.close()
