"""``CellWorkflow``: one ``%%wflo`` cell as a durable workflow. Imports only ``core``.

Cancellation (the notebook's interrupt cancels the workflow): ``execute`` is cancelled
and waited for (it interrupts the cell, escalating to a kill, and releases the step's
reservations), the step is closed as ``cancelled`` with what it cost, and the workflow
ends CANCELED. ``open_step`` and ``close_step`` are shielded: a cancel never leaves a
step row half written.

The lean path (``step.lean``: no ``--retries``, not a dry run): one local activity,
``run_step``, opens the step, runs the cell and closes the step, all in the workflow's
first task. The workflow's history still records the step's input and result, and the
ledger row is written before the cell runs; what it saves is two workflow tasks and the
server round trips of three activities. A cancel reaches it through the kernel (the
worker is the kernel's own) and through the local activity's cancellation. If its close
failed (the ledger went away), ``close_step`` runs with retries, as on the full path.

Closing a step is idempotent and is retried until the ledger answers (``CLOSE_RETRY``,
for up to the step's ``close_retry_s``, ``WFLO_CLOSE_RETRY_S``): a step whose ledger went
away mid-cell ends ``completed`` or ``failed`` with its sandbox seconds once it is back.

Retries: ``execute`` heartbeats, so a lost worker is noticed within
``EXECUTE_HEARTBEAT``; infrastructure failures (the sandbox would not start, a heartbeat
timeout) are retried with backoff up to ``--retries``. What the cell's code did (an
error, a refused LLM call, a timeout) is a result, not a failure, so it is never retried,
and neither is a cancellation (``NON_RETRYABLE``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    CancelledError,
    RetryState,
    TimeoutType,
    is_cancelled_exception,
)
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from wflo_jupyter.core.steps import StepInput, StepResult

LEDGER_RETRY = RetryPolicy(maximum_attempts=5, initial_interval=timedelta(milliseconds=200))
# a step's close is retried until the ledger answers (unlimited attempts, at most 5 s
# apart) for up to the step's ``close_retry_s``: a step is never left ``running``
CLOSE_RETRY = RetryPolicy(
    maximum_attempts=0,
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
)
EXECUTE_HEARTBEAT = timedelta(seconds=5)


def close_options(step: StepInput) -> dict[str, Any]:
    """``close_step``'s options: each attempt up to 30 s, retried for ``close_retry_s``."""
    return {
        "start_to_close_timeout": timedelta(seconds=30),
        "schedule_to_close_timeout": timedelta(seconds=max(step.close_retry_s, 30.0)),
        "retry_policy": CLOSE_RETRY,
    }


NON_RETRYABLE = ["ValueTransferError", "StepCancelled"]


def execute_retry(retries: int) -> RetryPolicy:
    """``--retries N``: N more attempts after the first, backoff 1 s doubling to 30 s."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=retries + 1,
        non_retryable_error_types=NON_RETRYABLE,
    )


async def _shielded(activity: Coroutine[Any, Any, Any]) -> Any:
    """Await an activity that a cancel of the workflow must not interrupt (the cancel
    that arrives meanwhile is dropped: the caller checks ``cancellation_reason``)."""
    task = asyncio.ensure_future(activity)  # one task: a coroutine cannot be awaited twice
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task


@workflow.defn(name="CellWorkflow")
class CellWorkflow:
    """open_step -> execute (retried on infrastructure failures) -> close_step. A dry run
    (``--estimate``) is only ``execute``: it is not recorded in the ledger."""

    @workflow.run
    async def run(self, step: StepInput) -> StepResult:
        if step.lean and not step.estimate and workflow.cancellation_reason() is None:
            return await self._run_lean(step)
        if not step.estimate:
            await _shielded(
                workflow.execute_activity(
                    "open_step",
                    step,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=LEDGER_RETRY,
                )
            )
        result = await self._execute(step)
        result.workflow_id = workflow.info().workflow_id
        if not step.estimate:
            await _shielded(workflow.execute_activity("close_step", result, **close_options(step)))
        return _ended(result)

    async def _run_lean(self, step: StepInput) -> StepResult:
        try:
            result: StepResult = await workflow.execute_local_activity(
                "run_step",
                step,
                result_type=StepResult,
                start_to_close_timeout=timedelta(seconds=step.timeout_s + 60),
                retry_policy=RetryPolicy(maximum_attempts=1),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except asyncio.CancelledError:
            result = StepResult.of_cancel(step.step_id, state_lost=False)
        except ActivityError as exc:
            if not is_cancelled_exception(exc):
                raise  # the ledger refused to open the step: nothing ran
            result = StepResult.of_cancel(step.step_id, state_lost=False)
        result.workflow_id = workflow.info().workflow_id
        if not result.recorded:
            await _shielded(
                workflow.execute_local_activity("close_step", result, **close_options(step))
            )
        return _ended(result)

    async def _execute(self, step: StepInput) -> StepResult:
        if workflow.cancellation_reason() is not None:
            return StepResult.of_cancel(step.step_id, state_lost=False)
        try:
            result: StepResult = await workflow.execute_activity(
                "execute",
                step,
                result_type=StepResult,
                start_to_close_timeout=timedelta(seconds=step.timeout_s + 60),
                heartbeat_timeout=EXECUTE_HEARTBEAT,
                retry_policy=execute_retry(step.retries),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            return result
        except asyncio.CancelledError:
            return StepResult.of_cancel(step.step_id, state_lost=False)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                return StepResult.of_cancel(step.step_id, state_lost=False)
            return _infrastructure_failure(step, exc)


def _ended(result: StepResult) -> StepResult:
    """The workflow's return: a step the analyst interrupted ends the workflow CANCELED."""
    if result.cancelled and workflow.cancellation_reason() is not None:
        raise CancelledError("the cell was interrupted")
    return result


def _infrastructure_failure(step: StepInput, exc: ActivityError) -> StepResult:
    """The step's result when ``execute`` failed for good (every attempt was used, or the
    failure is not retryable): a lost worker, or the sandbox that would not start."""
    cause = exc.cause
    if isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.HEARTBEAT:
        name = "WorkerLost"
        message = (
            "the worker running the cell stopped heartbeating for "
            f"{EXECUTE_HEARTBEAT.total_seconds():g} s"
        )
    else:
        name = getattr(cause, "type", None) or "SandboxError"
        message = str(getattr(cause, "message", None) or cause or exc)
    exhausted = exc.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    return StepResult(
        step_id=step.step_id,
        status="failed",
        exit_code=None,
        exit_reason="sandbox",
        error_name=name,
        error_value=message,
        attempts=step.retries + 1 if exhausted else 1,
    )
