"""``StepRunner``: a Temporal client plus an in-process worker for one session's queue.

A step's result is waited for through an outage of the server (it was killed and is
started again): the client gives up on an unreachable server after about ten seconds, so
the wait is resumed until the server answers again, for as long as the step itself may
run (``timeout_s`` + ``OUTAGE_PATIENCE``); past that the cell gets one line.

Before each cell ``check`` asks the server's health service (at most a few seconds): a
server that does not answer refuses the cell in one line naming Temporal, its address and
the remedy. When the address came from the local stack (``readdress`` reads where it runs
now) and the server was started again elsewhere, the client and the worker move there. The
notebook hears once when Temporal goes (the refusal, or a notice while a step waits) and
once when it is back (``OutageNotices``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from wflo_jupyter.core.errors import EngineUnavailable, WfloError
from wflo_jupyter.core.outage import OutageNotices
from wflo_jupyter.core.steps import StepInput, StepResult
from wflo_jupyter.orchestration.activities import StepActivities
from wflo_jupyter.orchestration.loop import BackgroundLoop
from wflo_jupyter.orchestration.runtime import quiet_runtime
from wflo_jupyter.orchestration.workflows import CellWorkflow

log = logging.getLogger(__name__)

OUTAGE_PATIENCE = 60.0  # seconds past the step's own timeout
PROBE_TIMEOUT_S = 2.0  # a health check, or a connection to a moved server, takes at most
REFUSED = "cells are refused until it is back"
AWAITED = "this step's result is awaited until it is back (its record is in the ledger)"
BACK = "cells run again"


async def connect(address: str, namespace: str) -> Client:
    """A Temporal client whose core logs go to Python logging (``quiet_runtime``)."""
    return await Client.connect(address, namespace=namespace, runtime=quiet_runtime())


def build_worker(
    client: Client,
    task_queue: str,
    activities: StepActivities,
    executor: ThreadPoolExecutor,
    *,
    graceful_shutdown_s: float = 0.0,
) -> Worker:
    """A worker of ``CellWorkflow`` and its activities on ``task_queue`` (built on the loop
    it will run on). ``graceful_shutdown_s``: how long running activities may go on after
    a shutdown began before they are cancelled."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[CellWorkflow],
        activities=[
            activities.open_step,
            activities.execute,
            activities.close_step,
            activities.run_step,
        ],
        activity_executor=executor,
        # heartbeats reach the server (and its cancel reaches the activity) this often
        max_heartbeat_throttle_interval=timedelta(milliseconds=500),
        default_heartbeat_throttle_interval=timedelta(milliseconds=500),
        graceful_shutdown_timeout=timedelta(seconds=graceful_shutdown_s),
    )


class CancelledStep(Exception):
    """The step's workflow ended CANCELED (its ledger row says ``cancelled``)."""


class StepRunner:
    """Starts ``CellWorkflow`` runs and hosts their worker on a ``BackgroundLoop``."""

    def __init__(
        self,
        loop: BackgroundLoop,
        address: str,
        namespace: str,
        task_queue: str,
        activities: StepActivities,
        *,
        readdress: Callable[[], str | None] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.address = address
        self.namespace = namespace
        self.task_queue = task_queue
        self.outages = OutageNotices(
            "Temporal", "WFLO_TEMPORAL_ADDRESS", notice or (lambda _text: None)
        )
        self._activities = activities
        self._readdress = readdress or (lambda: None)
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wflo-activity")
        try:
            self.client: Client = loop.run(self._connect(address), 30)
        except Exception as exc:
            log.warning("Temporal at %s: %s", address, exc)
            raise EngineUnavailable(self.outages.line(address, REFUSED)) from None
        self.worker: Worker = loop.run(self._start_worker(), 30)

    async def _connect(self, address: str) -> Client:
        return await asyncio.wait_for(connect(address, self.namespace), PROBE_TIMEOUT_S * 3)

    async def _start_worker(self) -> Worker:
        # A Worker must be built on the loop it runs on.
        worker = build_worker(self.client, self.task_queue, self._activities, self._executor)
        self._worker_task = asyncio.get_running_loop().create_task(worker.run())
        return worker

    # -- reachability ----------------------------------------------------------------------
    def check(self) -> None:
        """Before a cell: ``EngineUnavailable`` (one line) unless Temporal answers now, at
        its address or where the local stack started it again (the client moves there)."""
        self.loop.run(self._check(), PROBE_TIMEOUT_S * 5)

    async def _check(self) -> None:
        if await self._answers(self.client, self.address):
            if self._worker_task.done():  # it gave up during a long outage: a new one
                log.warning("Temporal worker ended (%s); starting it again", self._worker_end())
                self.worker = await self._start_worker()
            self.outages.back(self.address, BACK)
            return
        if await self._move():
            return
        self.outages.down(self.address, REFUSED, announce=False)  # the refusal says it
        raise EngineUnavailable(self.outages.line(self.address, REFUSED))

    async def _answers(self, client: Client, address: str) -> bool:
        timeout = timedelta(seconds=PROBE_TIMEOUT_S)
        try:
            probe = client.service_client.check_health(timeout=timeout)
            return await asyncio.wait_for(probe, PROBE_TIMEOUT_S + 1)
        except (RPCError, TimeoutError, RuntimeError) as exc:
            log.info("Temporal at %s does not answer: %s", address, exc)
            return False

    async def _move(self) -> bool:
        """The local stack started Temporal again at another address: connect the client
        and the worker there (True), if it answers."""
        try:
            address = self._readdress()
        except Exception as exc:  # an unreadable stack file: stay where it was
            log.warning("where Temporal runs now is unknown: %s", exc)
            return False
        if not address or address == self.address:
            return False
        try:
            client = await self._connect(address)
        except Exception as exc:
            log.info("Temporal at %s (moved) does not answer: %s", address, exc)
            return False
        log.warning(
            "Temporal moved from %s to %s: the client and worker follow", self.address, address
        )
        old, old_task = self.worker, self._worker_task
        self.client, self.address = client, address
        self.worker = await self._start_worker()
        asyncio.get_running_loop().create_task(_retire(old, old_task))
        self.outages.back(address, BACK)
        return True

    def _worker_end(self) -> str:
        task = self._worker_task
        error = None if task.cancelled() else task.exception()
        return f"{type(error).__name__}: {error}" if error else "it stopped"

    def submit(self, step: StepInput) -> Future[StepResult]:
        """Start the step's workflow (``step.workflow_id``); the future resolves to its
        result. A start sent again for the same id joins the run already there (running:
        USE_EXISTING; finished: REJECT_DUPLICATE, then its result is read)."""

        async def go() -> StepResult:
            try:
                handle = await self.client.start_workflow(
                    CellWorkflow.run,
                    step,
                    id=step.workflow_id,
                    task_queue=step.task_queue or self.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    # eager: this kernel's worker takes it at once; a worker elsewhere polls
                    request_eager_start=not step.task_queue,
                )
            except WorkflowAlreadyStartedError:
                handle = self.client.get_workflow_handle_for(CellWorkflow.run, step.workflow_id)
            except RPCError as exc:  # it went between the check and the start
                if exc.status != RPCStatusCode.UNAVAILABLE:
                    raise
                log.warning("starting %s: Temporal at %s: %s", step.workflow_id, self.address, exc)
                self.outages.down(self.address, REFUSED, announce=False)
                raise EngineUnavailable(self.outages.line(self.address, REFUSED)) from None
            return await self._result_through_outage(handle, step.timeout_s + OUTAGE_PATIENCE)

        return self.loop.submit(go())

    async def _result_through_outage(
        self, handle: WorkflowHandle[CellWorkflow, StepResult], patience_s: float
    ) -> StepResult:
        """``handle.result()``, resumed while the server is unreachable (a restart)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        while True:
            try:
                result = await handle.result()
            except RPCError as exc:
                if exc.status != RPCStatusCode.UNAVAILABLE:
                    raise
                log.warning("waiting for %s: Temporal at %s: %s", handle.id, self.address, exc)
                self.outages.down(self.address, AWAITED)
                if loop.time() >= deadline:
                    raise EngineUnavailable(
                        f"Temporal at {self.address} stopped answering while the step ran "
                        f"({exc.message}); its record is in the ledger"
                    ) from None
                if await self._move():
                    handle = self.client.get_workflow_handle_for(CellWorkflow.run, handle.id)
                await asyncio.sleep(1.0)
            else:
                self.outages.back(self.address, BACK)
                return result

    def cancel(self, workflow_id: str) -> Future[None]:
        """Ask Temporal to cancel the step's workflow (does not wait for it to end)."""

        async def go() -> None:
            await self.client.get_workflow_handle(workflow_id).cancel()

        return self.loop.submit(go())

    def result(self, future: Future[StepResult], timeout_s: float | None = None) -> StepResult:
        """Wait for a submitted step; workflow failures become one-line ``WfloError``s and
        a cancelled workflow a ``CancelledStep``."""
        try:
            return future.result(timeout_s)
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, CancelledError):
                raise CancelledStep(str(exc.cause)) from None
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


async def _retire(worker: Worker, task: asyncio.Task[None]) -> None:
    """Stop a worker whose server is gone (its polls fail; nothing it ran can report)."""
    try:
        await asyncio.wait_for(worker.shutdown(), 30)
    except Exception as exc:
        log.info("stopping the previous Temporal worker: %s", exc)
    if not task.done():
        task.cancel()
