"""``WorkerHost``: the standalone worker behind ``wflo worker --task-queue NAME``.

It runs steps that notebooks send to ``NAME`` (``%%wflo --queue NAME``) on this machine:
its own sandboxes (one per notebook session and image, kept between cells, labelled with
this process), its own LLM gateway (this host's provider keys), and the shared ledger,
cache and event outbox. A cell's output is published live on Redis
(``StepOutputChannel``) for the kernel that waits for it.

It serves two task queues: ``NAME``, shared with other workers, and its own
(``NAME.<host>-<pid>``), returned in each step's result. The kernel sends the session's
next steps to that one, so a session's steps stay where its sandbox holds its state.

A cell cannot ask the analyst anything from here (``confirm_above``): such a call is
refused. On SIGTERM it stops polling, lets running steps finish for up to
``graceful_s`` (then cancels them: they end ``cancelled``), removes its sandboxes and
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.steps import StepInput
from wflo_jupyter.orchestration.stepio import StepIO, StepIORegistry
from wflo_jupyter.session.events import SessionEvents
from wflo_jupyter.session.sandboxes import KernelSandboxes
from wflo_jupyter.stack.settings import Settings, resolve_endpoints

if TYPE_CHECKING:
    from temporalio.worker import Worker

    from wflo_jupyter.cache.step_output import StepOutputPublisher
    from wflo_jupyter.cache.step_values import StepValues
    from wflo_jupyter.gateway.service import LlmGateway
    from wflo_jupyter.ledger.store import Ledger
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)


@dataclass
class PublishedStepIO(StepIO):
    """A worker's ``StepIO``: output events go to the kernel over Redis as they happen."""

    publisher: StepOutputPublisher | None = None
    values_store: StepValues | None = None  # where the --out payloads go back
    step_id: str = ""
    _ended: bool = field(default=False, repr=False)

    def stream(self, name: str, text: str) -> None:
        if self.publisher is not None:
            self.publisher.publish("stream", name, text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish("display", data, metadata)

    def notice(self, text: str) -> None:
        if self.publisher is not None:
            self.publisher.publish("notice", text, None)

    def close(self) -> None:
        """The attempt is over: its ``--out`` payloads go back (before the ``end``)."""
        super().close()
        if self._ended:
            return
        self._ended = True
        if self.values_store is not None and self.outputs:
            self._send_outputs(self.values_store)
        if self.publisher is not None:
            self.publisher.end()

    def _send_outputs(self, store: StepValues) -> None:
        from wflo_jupyter.cache.step_values import StepValuesError

        try:
            store.put_outputs(self.step_id, self.output_payloads)
        except StepValuesError as exc:  # each value says why it did not come back
            refused = {name: {"error": str(exc)} for name in self.outputs}
            try:
                store.put_outputs(self.step_id, refused)
            except StepValuesError:
                log.warning("--out values of step %s not sent: %s", self.step_id, exc)


class WorkerHost:
    """One ``wflo worker`` process. ``run`` blocks until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        task_queue: str,
        *,
        progress: Callable[[str], None] | None = None,
        graceful_s: float = 30.0,
        idle_timeout_s: float = 1800.0,
    ) -> None:
        self.settings = settings
        self.task_queue = task_queue
        self.own_queue = f"{task_queue}.{socket.gethostname()}-{os.getpid()}"
        self.progress = progress or (lambda _line: None)
        self.graceful_s = graceful_s
        self.idle_timeout_s = idle_timeout_s
        self._sandboxes: dict[str, KernelSandboxes] = {}
        self._events: dict[str, SessionEvents] = {}  # sandbox.* events, per session
        self._ledger: Ledger | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = threading.Lock()

    def sandbox_for(self, image: str, session_id: str) -> SandboxSession:
        """The session's sandbox for ``image`` on this worker (created on demand)."""
        with self._lock:
            sandboxes = self._sandboxes.get(session_id)
            if sandboxes is None:
                events = self._events[session_id] = SessionEvents(session_id)
                if self._ledger is not None:
                    events.attach(self._ledger, None)
                sandboxes = KernelSandboxes(
                    session_id,
                    isolation=self.settings.isolation,
                    docker_host=self.settings.docker_host,
                    idle_timeout_s=self.idle_timeout_s,
                    on_change=events.sandbox_changed,
                )
                sandboxes.ensure_watchdog()
                self._sandboxes[session_id] = sandboxes
        return sandboxes.sandbox_for(image)

    def run(self, stop: threading.Event) -> None:
        """Connect the engines, serve both queues until ``stop``, then shut down."""
        from wflo_jupyter.cache.redis_client import connect_redis
        from wflo_jupyter.cache.step_output import StepOutputChannel
        from wflo_jupyter.cache.step_values import StepValues
        from wflo_jupyter.gateway.wiring import build_gateway
        from wflo_jupyter.ledger.budgets import BudgetLedger
        from wflo_jupyter.ledger.store import Ledger
        from wflo_jupyter.orchestration.activities import StepActivities
        from wflo_jupyter.orchestration.loop import BackgroundLoop
        from wflo_jupyter.orchestration.worker import build_worker, connect

        endpoints = resolve_endpoints(self.settings, progress=self.progress)
        if not endpoints.redis_url:
            raise RuntimeError("a wflo worker needs Redis (its cells' output travels there)")
        ledger = self._ledger = Ledger.connect(endpoints.database_url)
        budgets = BudgetLedger(ledger.engine)
        gateway, cache = build_gateway(
            budgets,
            home=self.settings.home,
            redis_url=endpoints.redis_url,
            simulated=self.settings.provider == "mock",
            price_overrides=None,
            on_missing=log.warning,
        )
        output = StepOutputChannel(connect_redis(endpoints.redis_url))
        values = StepValues(output.client)
        activities = StepActivities(
            ledger,
            self.sandbox_for,
            StepIORegistry(),
            budgets=budgets,
            make_io=lambda step: self._make_io(
                step, gateway, output.publisher(step.step_id), values
            ),
            worker_queue=self.own_queue,
        )
        loop = BackgroundLoop("wflo-worker")
        executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="wflo-activity")
        try:
            client = loop.run(connect(endpoints.temporal_address, endpoints.temporal_namespace), 30)

            async def start() -> list[Worker]:
                workers = [
                    build_worker(
                        client, queue, activities, executor, graceful_shutdown_s=self.graceful_s
                    )
                    for queue in (self.task_queue, self.own_queue)
                ]
                for worker in workers:  # built and run on the loop (Temporal's rule)
                    self._tasks.append(asyncio.get_running_loop().create_task(worker.run()))
                return workers

            running = loop.run(start(), 30)
            self.progress(
                f"wflo worker: serving task queue {self.task_queue} (and {self.own_queue}) "
                f"on Temporal {endpoints.temporal_address}"
            )
            stop.wait()
            self.progress("wflo worker: stopping (running steps may finish)")

            async def shutdown() -> None:
                await asyncio.gather(*(worker.shutdown() for worker in running))

            loop.run(shutdown(), self.graceful_s + 30)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                gateway.close()
            if cache is not None:
                with contextlib.suppress(Exception):
                    cache.close()
                    cache.client.close()
            with contextlib.suppress(Exception):
                output.client.close()
            loop.stop()
            with self._lock:
                sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
                events, self._events = list(self._events.values()), {}
            for each in sandboxes:  # sandbox.stopped written, then the writers drained
                with contextlib.suppress(Exception):
                    each.close()
            for writer in events:
                with contextlib.suppress(Exception):
                    writer.close()
            ledger.close()

    @staticmethod
    def _make_io(
        step: StepInput, gateway: LlmGateway, publisher: StepOutputPublisher, values: StepValues
    ) -> StepIO:
        """The step's IO here: output published, LLM calls answered by this gateway, its
        --in values read from Redis (a failure is raised: the step fails in one line)."""
        from wflo_jupyter.gateway.wiring import step_handlers

        io = PublishedStepIO(
            publisher=publisher,
            values_store=values,
            step_id=step.step_id,
            outputs=tuple(step.output_names),
        )
        if step.inputs_by_reference:
            io.encoded_inputs = values.take_inputs(step.step_id)
        handle, fast = step_handlers(
            gateway,
            step_id=step.step_id,
            scopes=step.budget_scopes(),
            no_cache=step.no_cache,
            notice=io.notice,
            origin=step.notebook_key,
            confirm_above_micros=None,
            confirm=lambda _text: None,  # nobody to ask here
        )
        io.llm_handler, io.llm_fast_path = handle, fast
        io.llm_drain = gateway.drain
        io.llm_cancel = lambda: gateway.cancel_step(step.step_id)
        return io
