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

    from wflo_jupyter.cache.llm_cache import LlmCache
    from wflo_jupyter.core.budget import BudgetState
    from wflo_jupyter.events.relay import OutboxRelay
    from wflo_jupyter.gateway.service import LlmGateway
    from wflo_jupyter.ledger.budgets import BudgetLedger
    from wflo_jupyter.ledger.models import StepRow
    from wflo_jupyter.ledger.reports import StepCostRow
    from wflo_jupyter.ledger.store import Ledger
    from wflo_jupyter.orchestration.loop import BackgroundLoop
    from wflo_jupyter.orchestration.worker import StepRunner
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)

LlmHandler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]
LlmFastPath = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]

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
        self._isolation: str | None = None
        self._watchdog: threading.Thread | None = None
        self._prewarm_threads: list[threading.Thread] = []
        self.endpoints: Endpoints | None = None
        self.ledger: Ledger | None = None
        self.runner: StepRunner | None = None
        self.relay: OutboxRelay | None = None
        self.loop: BackgroundLoop | None = None
        self.budgets: BudgetLedger | None = None
        self.gateway: LlmGateway | None = None
        self.cache: LlmCache | None = None
        self.teams: list[str] = []
        self.compute_price_micros = 0
        self.price_overrides: dict[str, Any] = {}
        self._noted: set[str] = set()
        self._note_sink: Callable[[str], None] | None = None

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

    def isolation(self) -> str:
        """The isolation mode of this kernel's sandboxes (chosen once: WFLO_ISOLATION)."""
        if self._isolation is None:
            from wflo_jupyter.sandbox.isolation import choose_isolation

            self._isolation = choose_isolation(self.settings.isolation, self.settings.docker_host)
        return self._isolation

    def sandbox_for(self, image: str) -> SandboxSession:
        """The kernel's persistent sandbox for ``image`` (created on demand)."""
        from wflo_jupyter.sandbox.isolation import open_sandbox_session

        with self._sandbox_lock:
            sandbox = self._sandboxes.get(image)
        if sandbox is not None:
            return sandbox
        if self._closed:
            raise WfloError("this wflo session is closed; %load_ext wflo_jupyter starts a new one")
        created = open_sandbox_session(self.isolation(), self.session_id, image, self.docker_client)
        with self._sandbox_lock:
            return self._sandboxes.setdefault(image, created)

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
        self._prewarm_threads.append(thread)
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
            if self.isolation() == "docker":
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
            self.gateway = self._build_gateway(budgets, endpoints)
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
        io.llm_handler, io.llm_fast_path = self.llm_handlers(step, io, spec.no_cache)
        io.llm_drain = self.gateway.drain if self.gateway is not None else None
        self._note_sink = io.notice
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
            self._note_sink = None
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

    # -- LLM calls ----------------------------------------------------------------------------
    def _note_once(self, text: str) -> None:
        """A one-line notice shown once per session (e.g. a missing tokenizer)."""
        if text in self._noted:
            return
        self._noted.add(text)
        sink = self._note_sink
        if sink is not None:
            sink(text)
        else:
            log.warning("%s", text)

    def _build_gateway(self, budgets: BudgetLedger, endpoints: Endpoints) -> LlmGateway:
        from wflo_jupyter.cache.llm_cache import LlmCache
        from wflo_jupyter.cache.locks import RedisLock
        from wflo_jupyter.cache.redis_client import connect_redis
        from wflo_jupyter.gateway.mock import MockUpstream
        from wflo_jupyter.gateway.service import LlmGateway, UpstreamLike
        from wflo_jupyter.gateway.upstream import ProviderRoutes, Upstream
        from wflo_jupyter.ledger.pricing import PriceBook, TokenCounter

        routes = ProviderRoutes.from_env()
        counter = TokenCounter(self.settings.home, on_missing=self._note_once)
        prices = PriceBook(self.price_overrides or None, counter=counter)
        simulated = self.settings.provider == "mock"
        upstream: UpstreamLike = (
            MockUpstream(lambda provider, model, body: counter.count(provider, model, body)[0])
            if simulated
            else Upstream(routes)
        )
        lock_factory = None
        self.cache = None
        if endpoints.redis_url:
            client = connect_redis(endpoints.redis_url)
            self.cache = LlmCache(client)
            lock_factory = lambda name: RedisLock(client, name)  # noqa: E731
        return LlmGateway(
            routes=routes,
            upstream=upstream,
            budgets=budgets,
            prices=prices,
            cache=self.cache,
            lock_factory=lock_factory,
            simulated=simulated,
        )

    def set_price_overrides(self, overrides: dict[str, Any]) -> None:
        """``%config WfloMagics.prices``: used for the next calls (ConfigError if bad)."""
        if overrides == self.price_overrides:
            return
        if self.gateway is not None:
            self.gateway.prices.set_overrides(overrides or None)
        self.price_overrides = dict(overrides)

    def llm_handlers(
        self, step: StepInput, io: StepIO, no_cache: bool
    ) -> tuple[LlmHandler, LlmFastPath]:
        """What the sandbox calls for each ``llm_request`` frame of ``step``'s cell: the
        worker-thread handler, and the reading thread's cache-hit fast path."""
        from wflo_jupyter.core.budget import BudgetScope
        from wflo_jupyter.gateway.channel import frame_handlers
        from wflo_jupyter.gateway.service import CallContext

        gateway = self.gateway
        assert gateway is not None
        context = CallContext(
            step_id=step.step_id,
            scopes=tuple(BudgetScope(kind, key) for kind, key in step.budget_scopes()),  # type: ignore[arg-type]
            no_cache=no_cache,
            notice=io.notice,
            origin=self.notebook_key,
        )
        return frame_handlers(gateway, context)

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
                if self.gateway is not None:
                    with contextlib.suppress(Exception):
                        self.gateway.close()
                if self.cache is not None:
                    with contextlib.suppress(Exception):
                        self.cache.close()
                        self.cache.client.close()
                if self.relay is not None:
                    self.relay.stop()
                if self.ledger is not None:
                    with contextlib.suppress(Exception):
                        self.ledger.close_session(self.session_id)
                    self.ledger.close()
                if self.loop is not None:
                    self.loop.stop()
                for thread in self._prewarm_threads:  # a sandbox still starting is closed too
                    thread.join(timeout=30)
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
