"""``WfloSession``: one per kernel. Wires the stack's engines to the adapters, owns the
kernel's sandbox containers, and runs steps.

Engines are connected lazily, on the first step, so ``%load_ext`` is instant and a
missing engine is reported on the cell that needed it; the sandbox container alone is
pre-warmed in the background after ``%load_ext``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.budget import BudgetNotFound
from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.steps import StepInput, StepResult, StepSpec
from wflo_jupyter.orchestration.stepio import OutputEvent, StepIO, StepIORegistry
from wflo_jupyter.stack.settings import Endpoints, Settings, resolve_endpoints

if TYPE_CHECKING:
    import docker

    from wflo_jupyter.core.budget import BudgetState
    from wflo_jupyter.events.relay import OutboxRelay
    from wflo_jupyter.ledger.budgets import BudgetLedger
    from wflo_jupyter.ledger.models import StepRow
    from wflo_jupyter.ledger.reports import StepCostRow
    from wflo_jupyter.ledger.store import Ledger
    from wflo_jupyter.orchestration.loop import BackgroundLoop
    from wflo_jupyter.orchestration.worker import StepRunner
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)

NO_LIMIT_MICROS = 10**15  # a notebook budget nobody set: record spending, refuse nothing


class WfloSession:
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
        self._sandbox_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._stop = threading.Event()
        self._docker: docker.DockerClient | None = None
        self._sandboxes: dict[str, SandboxSession] = {}
        self._watchdog: threading.Thread | None = None
        self.endpoints: Endpoints | None = None
        self.ledger: Ledger | None = None
        self.runner: StepRunner | None = None
        self.relay: OutboxRelay | None = None
        self.loop: BackgroundLoop | None = None
        self.budgets: BudgetLedger | None = None
        self.teams: list[str] = []
        self.compute_price_micros = 0

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
    def docker_client(self) -> docker.DockerClient:
        with self._sandbox_lock:
            if self._docker is None:
                from wflo_jupyter.sandbox.docker_runner import connect_docker
                from wflo_jupyter.sandbox.session import reap_orphans

                self._docker = connect_docker(self.settings.docker_host)
                try:
                    removed = reap_orphans(self._docker)
                    if removed:
                        log.info("removed %d sandbox containers of dead kernels", len(removed))
                except Exception as exc:  # cleaning up others' leftovers must not block us
                    log.warning("sandbox reaper: %s", exc)
            return self._docker

    def sandbox_for(self, image: str) -> SandboxSession:
        """The kernel's persistent sandbox container for ``image`` (created on demand)."""
        client = self.docker_client()
        with self._sandbox_lock:
            sandbox = self._sandboxes.get(image)
            if sandbox is None:
                from wflo_jupyter.sandbox.session import SandboxSession

                sandbox = SandboxSession(client, self.session_id, image=image)
                self._sandboxes[image] = sandbox
            return sandbox

    def prewarm(self, image: str) -> threading.Thread:
        """Start the sandbox container for ``image`` in the background (errors are logged
        and reported again by the first cell that needs it)."""

        def warm() -> None:
            try:
                self.sandbox_for(image).start()
            except Exception as exc:
                log.info("sandbox pre-warm skipped: %s", exc)

        thread = threading.Thread(target=warm, name="wflo-prewarm", daemon=True)
        thread.start()
        self._ensure_watchdog()
        return thread

    def _ensure_watchdog(self) -> None:
        if self._watchdog is not None:
            return

        def watch() -> None:
            while not self._stop.wait(min(30.0, max(1.0, self.idle_timeout_s / 4))):
                with self._sandbox_lock:
                    sandboxes = list(self._sandboxes.values())
                for sandbox in sandboxes:
                    with contextlib.suppress(Exception):
                        sandbox.stop_if_idle(self.idle_timeout_s)

        self._watchdog = threading.Thread(target=watch, name="wflo-idle-watchdog", daemon=True)
        self._watchdog.start()

    def restart_sandbox(self) -> None:
        """Replace every sandbox container of this session (their state is dropped)."""
        with self._sandbox_lock:
            sandboxes = list(self._sandboxes.values())
        for sandbox in sandboxes:
            sandbox.restart()

    def interrupt(self) -> None:
        """Interrupt the cell running in any of this session's sandboxes."""
        with self._sandbox_lock:
            sandboxes = list(self._sandboxes.values())
        for sandbox in sandboxes:
            sandbox.interrupt()

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
            self.docker_client()
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
            self._ensure_watchdog()
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
    ) -> tuple[StepResult, StepIO]:
        """Run one cell as a durable step. ``on_event`` is called on THIS thread for each
        output event as it arrives (the kernel's main thread, so output lands in the cell)."""
        self.start()
        assert self.runner is not None
        step_id = str(uuid.uuid4())
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
            retries=spec.retries,
            notebook_key=self.notebook_key,
            teams=list(self.teams),
            compute_price_micros=self.compute_price_micros,
        )
        io = self.step_io.open(
            step_id, StepIO(inputs=dict(inputs or {}), outputs=spec.outputs, fresh=spec.fresh)
        )
        deliver = on_event or (lambda _event: None)
        started = time.monotonic()
        future = self.runner.submit(step)
        try:
            interrupted = False
            while True:
                try:
                    self._drain(io, deliver, wait_s=0.05)
                    if future.done():
                        self._drain(io, deliver, wait_s=0)
                        break
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True  # stop the cell; its result still gets recorded
                    self.interrupt()
            result = self.runner.result(future)
        finally:
            self.step_io.close(step_id)
        result.duration_s = time.monotonic() - started
        return result, io

    @staticmethod
    def _drain(io: StepIO, deliver: Callable[[OutputEvent], None], wait_s: float) -> None:
        try:
            event = io.events.get(timeout=wait_s) if wait_s else io.events.get_nowait()
        except queue.Empty:
            return
        deliver(event)
        while True:
            try:
                deliver(io.events.get_nowait())
            except queue.Empty:
                return

    def steps(self) -> Sequence[StepRow]:
        """This session's steps, in order."""
        self.start()
        assert self.ledger is not None
        return self.ledger.steps(self.session_id)

    def events(self, limit: int = 20, all_sessions: bool = False) -> list[dict[str, Any]]:
        """The newest event envelopes of this session (or of every session)."""
        self.start()
        assert self.ledger is not None
        return self.ledger.recent_events(limit, None if all_sessions else self.session_id)

    # -- budgets and reports ----------------------------------------------------------------
    def _budgets(self) -> BudgetLedger:
        self.start()
        assert self.budgets is not None
        return self.budgets

    def budget_states(self) -> list[BudgetState]:
        """The notebook's budget and every team budget this session is charged to."""
        budgets = self._budgets()
        return [budgets.state("notebook", self.notebook_key)] + [
            budgets.state("team", team) for team in self.teams
        ]

    def set_notebook_budget(self, limit_micros: int) -> BudgetState:
        return self._budgets().set_budget("notebook", self.notebook_key, limit_micros)

    def set_team_budget(self, team: str, limit_micros: int, period: str | None) -> BudgetState:
        budgets = self._budgets()
        if period is None:
            try:
                period = budgets.state("team", team).period
            except BudgetNotFound:
                period = "none"
        return budgets.set_budget("team", team, limit_micros, period)

    def team_state(self, team: str) -> BudgetState:
        try:
            return self._budgets().state("team", team)
        except BudgetNotFound:
            raise WfloError(
                f"no team budget {team!r}; create it with %wflo budget --team {team} USD"
            ) from None

    def join_team(self, team: str) -> BudgetState:
        """Also charge this notebook's steps to ``team`` (its budget must exist)."""
        state = self.team_state(team)
        if team not in self.teams:
            self.teams.append(team)
        return state

    def report_rows(self, all_sessions: bool = False) -> list[StepCostRow]:
        from wflo_jupyter.ledger.reports import step_costs

        self.start()
        assert self.ledger is not None
        return step_costs(
            self.ledger.engine, session_ids=None if all_sessions else [self.session_id]
        )

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, relay, loop and watchdog; remove the sandbox containers; close
        connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            try:
                if self.runner is not None:
                    self.runner.close()
            finally:
                if self.relay is not None:
                    self.relay.stop()
                if self.ledger is not None:
                    with contextlib.suppress(Exception):
                        self.ledger.close_session(self.session_id)
                    self.ledger.close()
                if self.loop is not None:
                    self.loop.stop()
                with self._sandbox_lock:
                    sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
                for sandbox in sandboxes:
                    with contextlib.suppress(Exception):
                        sandbox.close()
                if self._docker is not None:
                    with contextlib.suppress(Exception):
                        self._docker.close()
                if self._watchdog is not None:
                    self._watchdog.join(timeout=5)
