"""A breaking change to ``CellWorkflow``, for ``test_workflow_replay``: in a module of its
own so that the workflow sandbox validates it without the test module's file access."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from wflo_jupyter.core.steps import StepInput, StepResult


@workflow.defn(name="CellWorkflow")
class ReorderedCellWorkflow:
    """A breaking change: the step is closed before the cell runs."""

    @workflow.run
    async def run(self, step: StepInput) -> StepResult:
        result = StepResult(step_id=step.step_id, status="completed", exit_code=0, exit_reason="ok")
        await workflow.execute_activity(
            "close_step", result, start_to_close_timeout=timedelta(seconds=30)
        )
        return result
