"""``SessionSteps``: running one ``%%wflo`` cell as a step, for ``WfloSession``.

Builds the step's ``StepInput`` (its workflow id: one per cell execution) and ``StepIO``
(inputs, output queue, LLM handlers, cancellation), starts the workflow, drains the
step's output on the kernel's main thread while it runs, and turns the notebook's
interrupt into a cancellation: the workflow is cancelled in Temporal and the cell is
stopped here at once (the worker is in this process).

A base class of ``WfloSession`` (over ``SessionQueries``): it reads the engines the
session connected (``start()``, ``runner``, ``gateway``) and its identity.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.core.reports import OutputEvent
from wflo_jupyter.core.steps import StepInput, StepResult, StepSpec
from wflo_jupyter.orchestration.stepio import Ask, StepIO, StepIORegistry
from wflo_jupyter.session.queries import SessionQueries

if TYPE_CHECKING:
    from wflo_jupyter.cache.llm_cache import LlmCache
    from wflo_jupyter.gateway.service import LlmGateway
    from wflo_jupyter.ledger.health import LedgerHealth
    from wflo_jupyter.orchestration.worker import StepRunner
    from wflo_jupyter.session.remote_steps import RemoteStep
    from wflo_jupyter.stack.settings import Settings

log = logging.getLogger(__name__)

LlmHandler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]
LlmFastPath = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]


def _log_cancel_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.warning("cancelling the step's workflow failed: %s", error)


class SessionSteps(SessionQueries):
    """Steps of one kernel session; ``WfloSession`` supplies the engines and identity."""

    step_io: StepIORegistry
    runner: StepRunner | None
    gateway: LlmGateway | None
    cache: LlmCache | None
    ledger_health: LedgerHealth | None
    settings: Settings
    compute_price_micros: int
    confirm_above_micros: int | None
    _note_sink: Callable[[str], None] | None
    _outage_notices: list[str]
    _attempts: dict[int, int]
    _remote_queues: dict[str, str]  # --queue name -> the worker that holds our sandbox

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
        self._refuse_without_ledger()
        self.runner.check()  # Temporal: one line, within seconds, while it is away
        step_id = str(uuid.uuid4())
        dry = spec.estimate
        queue = "" if dry else self._remote_queues.get(spec.queue, spec.queue)
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
            lean=not dry and spec.retries == 0,
            task_queue=queue,
            no_cache=spec.no_cache,
            inputs_by_reference=bool(queue and inputs),
            output_names=list(spec.outputs) if queue else [],
            close_retry_s=self.settings.close_retry_s,
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
        while self._outage_notices:  # said while no cell ran (e.g. the ledger is back)
            io.notice(self._outage_notices.pop(0))
        if not dry:
            self.meter_step = (step_id, step.name)
        deliver = on_event or (lambda _event: None)
        started = time.monotonic()
        remote = self._remote(step, io, dict(inputs or {})) if queue else None
        future = self.runner.submit(step)
        future.add_done_callback(lambda _done: io.wake())  # no polling delay at the end
        try:
            interrupted = False
            while True:
                try:
                    io.pump(deliver, ask, wait_s=0.05)
                    if future.done():
                        if remote is not None:  # the worker's last output may trail
                            remote.settle()
                        if self.ledger_health is not None:  # "back", in this cell
                            self.ledger_health.recheck()
                        io.pump(deliver, ask, wait_s=0)
                        break
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True  # stop the cell; its result still gets recorded
                    self._cancel(step, io)
            result = self._result(step, io, future)
            if remote is not None:
                remote.finish(result)
            if spec.queue and result.worker_queue:  # the session's next steps go there too
                self._remote_queues[spec.queue] = result.worker_queue
        finally:
            if remote is not None:
                remote.close()
            self._note_sink = None
            io.close()
            self.step_io.close(step_id)
            if self.gateway is not None:
                self.gateway.inflight.forget(step_id)
            self.refresh_meters()
        result.duration_s = time.monotonic() - started
        return result, io

    def _remote(self, step: StepInput, io: StepIO, inputs: dict[str, Any]) -> RemoteStep:
        """The kernel's side of a step a ``wflo worker`` runs (before it starts)."""
        from wflo_jupyter.session.remote_steps import RemoteStep

        if self.cache is None:
            raise WfloError(
                f"--queue {step.task_queue}: a worker's output and values travel over Redis, "
                "and this kernel has none (set WFLO_REDIS_URL)"
            )
        return RemoteStep(self.cache.client, step, io, inputs)

    def _refuse_without_ledger(self) -> None:
        """``LedgerUnavailable`` (one line) when the ledger does not answer: the cell
        would run unbudgeted. That line is the outage's notice for this cell."""
        from wflo_jupyter.core.errors import LedgerUnavailable

        if self.ledger_health is None:
            return
        try:
            self.ledger_health.check()
        except LedgerUnavailable:
            self._outage_notices.clear()
            raise

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
