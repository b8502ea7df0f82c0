"""``StepRunner``: a Temporal client plus an in-process worker for one session's queue."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from wflo_jupyter.core.errors import EngineUnavailable, WfloError
from wflo_jupyter.core.steps import StepInput, StepResult
from wflo_jupyter.orchestration.activities import StepActivities
from wflo_jupyter.orchestration.loop import BackgroundLoop
from wflo_jupyter.orchestration.workflows import CellWorkflow


class StepRunner:
    """Starts ``CellWorkflow`` runs and hosts their worker on a ``BackgroundLoop``."""

    def __init__(
        self,
        loop: BackgroundLoop,
        address: str,
        namespace: str,
        task_queue: str,
        activities: StepActivities,
    ) -> None:
        self.loop = loop
        self.address = address
        self.namespace = namespace
        self.task_queue = task_queue
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wflo-activity")
        try:
            self.client: Client = loop.run(Client.connect(address, namespace=namespace), 30)
        except Exception as exc:
            raise EngineUnavailable(f"Temporal at {address}: {exc}") from None
        self.worker: Worker = loop.run(self._start_worker(activities), 30)

    async def _start_worker(self, activities: StepActivities) -> Worker:
        # A Worker must be built on the loop it runs on.
        worker = Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=[CellWorkflow],
            activities=[activities.open_step, activities.execute, activities.close_step],
            activity_executor=self._executor,
        )
        self._worker_task = asyncio.get_running_loop().create_task(worker.run())
        return worker

    def submit(self, step: StepInput) -> Future[StepResult]:
        """Start the step's workflow; the future resolves to its result."""

        async def go() -> StepResult:
            return await self.client.execute_workflow(
                CellWorkflow.run,
                step,
                id=f"wflo-{'estimate' if step.estimate else 'step'}-{step.step_id}",
                task_queue=self.task_queue,
                request_eager_start=True,
            )

        return self.loop.submit(go())

    def result(self, future: Future[StepResult], timeout_s: float | None = None) -> StepResult:
        """Wait for a submitted step; workflow failures become one-line ``WfloError``s."""
        try:
            return future.result(timeout_s)
        except WorkflowFailureError as exc:
            raise WfloError(f"workflow failed: {exc.cause or exc}") from None

    def run(self, step: StepInput, timeout_s: float) -> StepResult:
        """Run one step to its end and return its result."""
        return self.result(self.submit(step), timeout_s)

    def describe(self, workflow_id: str) -> str:
        """The workflow's status name (``COMPLETED``, ``RUNNING``, ...)."""

        async def go() -> str:
            description = await self.client.get_workflow_handle(workflow_id).describe()
            return description.status.name if description.status else "UNKNOWN"

        return self.loop.run(go(), 30)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.worker.shutdown()

        try:
            self.loop.run(shutdown(), 30)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
