"""The bare baseline of ``bench/orchestration.py``: a workflow that returns at once.

In a module of its own so that the workflow sandbox validates it without importing
the benchmark's other modules (docker, jupyter_client)."""

from __future__ import annotations

from temporalio import workflow


@workflow.defn(name="BenchEmptyWorkflow")
class EmptyWorkflow:
    """No activities: what Temporal itself costs for one eager workflow run."""

    @workflow.run
    async def run(self, value: str) -> str:
        return value
