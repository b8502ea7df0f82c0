"""``StepActivities``: the activities of ``CellWorkflow``, methods on a class built with
the session's ledger, its sandbox sessions and the in-kernel step IO.

``run_step`` (the lean path's local activity) runs a step's cell once: Temporal runs a
local activity again when the workflow task that carried its result was lost (the server
was killed before the worker could complete it), and that second run gets the first
run's result (waiting for it while it still runs) instead of running the cell again."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from decimal import Decimal

from temporalio import activity
from temporalio.exceptions import ApplicationError

from wflo_jupyter.core.budget import threshold_notice
from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import StepInput, StepResult
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.health import is_ledger_outage
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.orchestration.heartbeat import Heartbeat
from wflo_jupyter.orchestration.stepio import StepIO, StepIORegistry
from wflo_jupyter.sandbox.session import ExecResult, SandboxLimits, SandboxSession
from wflo_jupyter.sandbox.values import ValueTransferError

log = logging.getLogger(__name__)

TRACEBACK_LIMIT = 64 * 1024  # what travels through the workflow history
RUNS_KEPT = 64  # run_step results kept for a run of the same step again

SandboxFor = Callable[[str, str], SandboxSession]
"""The sandbox for ``(image, session_id)``: a kernel has one per image, a ``wflo worker``
one per session and image."""
MakeIO = Callable[[StepInput], StepIO]
"""A ``wflo worker``'s ``StepIO`` for a step started elsewhere (its output published)."""


class StepActivities:
    """Ledger and sandbox work of one step; ``on_change`` runs after each ledger write."""

    def __init__(
        self,
        ledger: Ledger,
        sandbox_for: SandboxFor,
        step_io: StepIORegistry,
        on_change: Callable[[], None] | None = None,
        budgets: BudgetLedger | None = None,
        make_io: MakeIO | None = None,
        worker_queue: str = "",
    ) -> None:
        self.ledger = ledger
        self.budgets = budgets
        self.sandbox_for = sandbox_for
        self.step_io = step_io
        self.on_change = on_change or (lambda: None)
        self.make_io = make_io
        self.worker_queue = worker_queue
        self._runs: OrderedDict[str, Future[StepResult]] = OrderedDict()
        self._runs_lock = threading.Lock()

    @activity.defn(name="open_step")
    def open_step(self, step: StepInput) -> int:
        seq = self.ledger.start_step(
            step_id=step.step_id,
            session_id=step.session_id,
            name=step.name,
            code=step.code,
            budget_micros=step.budget_micros,
            workflow_id=activity.info().workflow_id or "",
            image=step.image,
        )
        if self.budgets is not None and step.budget_micros is not None:
            self.budgets.set_budget("cell", step.step_id, step.budget_micros)
        self.on_change()
        return seq

    @activity.defn(name="run_step", no_thread_cancel_exception=True)
    def run_step(self, step: StepInput) -> StepResult:
        """The lean path, a local activity: ``open_step``, the cell, ``close_step`` in one.

        A ledger failure on open is raised (nothing ran); what the sandbox does is a
        result; a failed close leaves ``recorded`` false, and the workflow then closes the
        step with retries. A step that already ran here gets that run's result."""
        with self._runs_lock:
            earlier = self._runs.get(step.step_id)
            if earlier is None:
                run: Future[StepResult] = Future()
                self._runs[step.step_id] = run
                while len(self._runs) > RUNS_KEPT:
                    self._runs.popitem(last=False)
        if earlier is not None:
            log.warning("step %s ran here already: its result is sent again", step.step_id)
            return earlier.result()
        try:
            run.set_result(self._run_step_once(step))
        except BaseException as exc:
            run.set_exception(exc)
        return run.result()

    def _run_step_once(self, step: StepInput) -> StepResult:
        self.open_step(step)
        try:
            result = self.execute(step)
        except ApplicationError as exc:
            result = StepResult(
                step_id=step.step_id,
                status="failed",
                exit_code=None,
                exit_reason="sandbox",
                error_name=exc.type or "SandboxError",
                error_value=exc.message,
            )
        result.workflow_id = activity.info().workflow_id or ""
        try:
            self.close_step(result)
        except Exception:
            log.warning("closing step %s failed; the workflow retries it", step.step_id)
        else:
            result.recorded = True
        return result

    @activity.defn(name="execute", no_thread_cancel_exception=True)
    def execute(self, step: StepInput) -> StepResult:
        io = self.step_io.get(step.step_id)
        if io is not None or self.make_io is None:
            return self._execute(step, io or StepIO())
        io = self.step_io.open(step.step_id, self.make_io(step))  # a worker's step
        try:
            result = self._execute(step, io)
            result.worker_queue = self.worker_queue
            return result
        finally:
            self.step_io.close(step.step_id)
            io.close()

    def _execute(self, step: StepInput, io: StepIO) -> StepResult:
        begun = time.monotonic()
        info = activity.info()
        attempt = info.attempt
        io.attempt = max(io.attempt, attempt)
        if attempt == 1:  # which sandbox the step found: a retry says if it still has it
            with contextlib.suppress(Exception):
                io.sandbox_before = self.sandbox_for(step.image, step.session_id).container_id
        io.deadline = time.monotonic() + step.timeout_s  # questions to the analyst expire
        if io.before_run is not None:
            io.before_run(step)
        silent = time.monotonic() - begun
        if io.attempt > attempt or (
            info.heartbeat_timeout and silent > info.heartbeat_timeout.total_seconds()
        ):
            # no heartbeat for that long: the server gave up on this attempt (a retry runs)
            raise ApplicationError("this attempt missed its heartbeats", type="Superseded")
        limits = SandboxLimits(
            memory_bytes=step.memory_bytes, cpus=step.cpus, pids_limit=step.pids_limit
        )
        try:
            sandbox = self.sandbox_for(step.image, step.session_id)
            sandbox.llm_handler = io.llm_handler
            sandbox.llm_fast_path = io.llm_fast_path
            run = sandbox.run_fresh if io.fresh else sandbox.execute
            io.on_cancel = lambda: _stop(sandbox, io)
            if io.cancelled:  # interrupted before the cell started
                return StepResult.of_cancel(step.step_id, state_lost=False)
            with Heartbeat(lambda: io.cancelled, io.cancel):
                result = run(
                    step.code,
                    inputs=io.inputs,
                    outputs=io.outputs,
                    timeout_s=step.timeout_s,
                    on_stream=io.stream,
                    on_display=io.display,
                    output_cap=io.output_cap,
                    limits=limits,
                )
        except ValueTransferError as exc:
            kind = "ValueTransferError"
            raise ApplicationError(str(exc), type=kind, non_retryable=True) from None
        except SandboxError as exc:  # the sandbox would not start: retried (--retries)
            raise ApplicationError(str(exc), type="SandboxError") from None
        finally:
            io.on_cancel = None
        cancelled = io.cancelled or result.exit_reason == "interrupted"
        if cancelled and self.budgets is not None:
            self.budgets.release_step(step.step_id)  # calls cut off: their money is free now
        sandbox.drain_llm()
        if io.llm_drain is not None:
            io.llm_drain(10.0)
        if attempt > 1:
            state = _state_after_retry(io.sandbox_before, result, fresh=io.fresh)
            io.notice(
                f"retry: attempt {attempt} of {step.retries + 1} after an infrastructure "
                f"failure; {state}"
            )
        for notice in result.notices:
            io.notice(notice)
        io.values.update(result.outputs)
        io.value_errors.update(result.output_errors)
        io.state_lost = io.state_lost or result.state_lost
        charged = not step.estimate and step.compute_price_micros > 0  # a dry run is free
        if self.budgets is not None and charged and result.seconds > 0:
            settlement = self.budgets.charge_compute(
                step.step_id,
                Decimal(str(result.seconds)),
                step.compute_price_micros,
                scopes=step.budget_scopes(),
            )
            for crossed in settlement.thresholds:
                io.notice(threshold_notice(crossed.scope, crossed.threshold, crossed.state))
        if cancelled:
            return StepResult.of_cancel(
                step.step_id, state_lost=result.state_lost, seconds=result.seconds
            )
        summary = _step_result(step, result)
        summary.attempts = attempt
        return summary

    @activity.defn(name="close_step")
    def close_step(self, result: StepResult) -> None:
        """Record the step's outcome (idempotent); the workflow retries it while the
        ledger is unreachable, which fails each attempt with one line."""
        try:
            self.ledger.finish_step(result)
        except Exception as exc:
            if not is_ledger_outage(exc):
                raise
            raise ApplicationError(str(exc).splitlines()[0], type="LedgerUnavailable") from None
        self.on_change()


def _stop(sandbox: SandboxSession, io: StepIO) -> None:
    """Cancel: cut the step's LLM calls off upstream and interrupt the cell (the sandbox
    kills it if it does not stop within its grace period)."""
    if io.llm_cancel is not None:
        io.llm_cancel()
    sandbox.interrupt()


def _state_after_retry(before: str | None, result: ExecResult, *, fresh: bool) -> str:
    """What a retried step's sandbox still holds (``before``: the container the step
    found when it started)."""
    if fresh:
        return "the cell ran in a new throwaway sandbox (--fresh)"
    if before is not None and before == result.container_id and not result.state_lost:
        return "the sandbox and its state were kept"
    if before is not None:
        return "the sandbox was rebuilt and the state of earlier cells was lost"
    return "the cell ran in a new sandbox"


def _step_result(step: StepInput, result: ExecResult) -> StepResult:
    """The JSON-sized summary of a sandbox run that the workflow records."""
    status = "completed" if result.ok else "failed"
    return StepResult(
        step_id=step.step_id,
        status=status,
        exit_code=0 if result.ok else (1 if result.exit_reason == "error" else None),
        exit_reason=result.exit_reason,
        error_name=result.ename if not result.ok else "",
        error_value=result.evalue if not result.ok else "",
        traceback=result.traceback[-TRACEBACK_LIMIT:],
        sandbox_seconds=result.seconds,
        duration_s=result.seconds,
    )
