"""``CellWorkflow``: one ``%%wflo`` cell as a durable workflow. Imports only ``core``."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from wflo_jupyter.core.steps import StepInput, StepResult

LEDGER_RETRY = RetryPolicy(maximum_attempts=5, initial_interval=timedelta(milliseconds=200))


@workflow.defn(name="CellWorkflow")
class CellWorkflow:
    """open_step -> execute (with ``--retries``) -> close_step. A dry run (``--estimate``)
    is only ``execute``: it is not recorded in the ledger."""

    @workflow.run
    async def run(self, step: StepInput) -> StepResult:
        if not step.estimate:
            await workflow.execute_activity(
                "open_step",
                step,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=LEDGER_RETRY,
            )
        result = StepResult(
            step_id=step.step_id, status="failed", exit_code=None, exit_reason="sandbox"
        )
        for _attempt in range(step.retries + 1):
            try:
                result = await workflow.execute_activity(
                    "execute",
                    step,
                    result_type=StepResult,
                    start_to_close_timeout=timedelta(seconds=step.timeout_s + 60),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
            except ActivityError as exc:
                cause = exc.cause
                message = str(getattr(cause, "message", None) or cause or exc)
                result = StepResult(
                    step_id=step.step_id,
                    status="failed",
                    exit_code=None,
                    exit_reason="sandbox",
                    error_name="SandboxError",
                    error_value=message,
                )
            if result.ok:
                break
        result.workflow_id = workflow.info().workflow_id
        if step.estimate:
            return result
        await workflow.execute_activity(
            "close_step",
            result,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=LEDGER_RETRY,
        )
        return result
