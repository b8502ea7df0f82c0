"""``WfloSession``: one per kernel. Wires the stack's engines to the adapters, owns the
kernel's sandboxes (through ``KernelSandboxes``), runs steps, and answers the notebook
layer's questions (steps, events, budgets and their live feed, cache statistics and
clears, engine status) with ``core`` value types.

Engines are connected lazily, on the first step, so ``%load_ext`` is instant and a
missing engine is reported on the cell that needed it; the sandbox container alone is
pre-warmed in the background after ``%load_ext``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wflo_jupyter.core.budget import BudgetNotFound
from wflo_jupyter.core.doctor import DoctorReport
from wflo_jupyter.core.reports import StepSummary
from wflo_jupyter.orchestration.stepio import StepIORegistry
from wflo_jupyter.session.events import SessionEvents
from wflo_jupyter.session.images import SessionImages
from wflo_jupyter.session.sandboxes import KernelSandboxes
from wflo_jupyter.session.steps import SessionSteps
from wflo_jupyter.stack.settings import Endpoints, Settings, local_address, resolve_endpoints

if TYPE_CHECKING:
    from wflo_jupyter.cache.llm_cache import LlmCache
    from wflo_jupyter.events.relay import OutboxRelay
    from wflo_jupyter.gateway.service import LlmGateway
    from wflo_jupyter.ledger.budgets import BudgetLedger
    from wflo_jupyter.ledger.health import LedgerHealth
    from wflo_jupyter.ledger.store import Ledger
    from wflo_jupyter.orchestration.loop import BackgroundLoop
    from wflo_jupyter.orchestration.worker import StepRunner
    from wflo_jupyter.sandbox.session import SandboxSession

log = logging.getLogger(__name__)

NO_LIMIT_MICROS = 10**15  # a notebook budget nobody set: record spending, refuse nothing


def load_settings() -> Settings:
    """The ``WFLO_*`` settings of this process (``ConfigError``, one line, when bad)."""
    return Settings.from_env()


class WfloSession(SessionSteps):
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
        self._started = False
        self._closed = False
        self.session_events = SessionEvents(self.session_id)
        self.sandboxes = KernelSandboxes(
            self.session_id,
            isolation=settings.isolation,
            docker_host=settings.docker_host,
            idle_timeout_s=idle_timeout_s,
            on_change=self.session_events.sandbox_changed,
        )
        self.images = SessionImages(settings, self.sandboxes, self.progress)
        self.endpoints: Endpoints | None = None
        self.ledger: Ledger | None = None
        self.ledger_health: LedgerHealth | None = None
        self.runner: StepRunner | None = None
        self.relay: OutboxRelay | None = None
        self.loop: BackgroundLoop | None = None
        self.budgets: BudgetLedger | None = None
        self.gateway: LlmGateway | None = None
        self.cache: LlmCache | None = None
        self.teams: list[str] = []
        self.compute_price_micros = 0
        self.confirm_above_micros: int | None = None  # %config WfloMagics.confirm_above
        self.price_overrides: dict[str, Any] = {}
        self._noted: set[str] = set()
        self._note_sink: Callable[[str], None] | None = None
        self._outage_notices: list[str] = []  # said while no cell ran: shown by the next
        self._attempts: dict[int, int] = {}  # execution count -> steps started for it
        self._remote_queues: dict[str, str] = {}

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
    def sandbox_for(self, image: str) -> SandboxSession:
        """The kernel's persistent sandbox for ``image`` (created on demand)."""
        return self.sandboxes.sandbox_for(image)

    def prewarm(self, image: str) -> threading.Thread:
        """Start the sandbox for ``image`` in the background."""
        return self.sandboxes.prewarm(image)

    def restart_sandbox(self) -> None:
        """Replace every sandbox container of this session (their state is dropped)."""
        self.sandboxes.restart()

    def interrupt(self) -> None:
        """Interrupt the cell running in any of this session's sandboxes."""
        self.sandboxes.interrupt()

    def sandbox_ids(self) -> list[str]:
        """The running sandboxes' ids (container ids, ``bwrap-<pid>``, ...)."""
        return self.sandboxes.ids()

    # -- engines ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect every engine (idempotent); raises one-line ``WfloError``s."""
        with self._lock:
            if self._started:
                return
            from wflo_jupyter.events.relay import OutboxRelay
            from wflo_jupyter.ledger.budgets import BudgetLedger
            from wflo_jupyter.ledger.health import LedgerHealth
            from wflo_jupyter.orchestration.activities import StepActivities
            from wflo_jupyter.orchestration.loop import BackgroundLoop
            from wflo_jupyter.orchestration.worker import StepRunner

            endpoints = resolve_endpoints(self.settings, progress=self.progress)
            if self.sandboxes.isolation() == "docker":
                self.sandboxes.docker_client()
            ledger = _connect_ledger(endpoints.database_url)
            health = LedgerHealth(ledger.engine, self._outage_notice)
            ledger.open_session(
                self.session_id,
                kernel_id=self.kernel_id,
                notebook_path=self.notebook_path,
                user_name=getpass.getuser(),
                hostname=socket.gethostname(),
                pid=os.getpid(),
            )
            relay = (
                OutboxRelay.from_settings(
                    ledger,
                    endpoints.kafka_bootstrap,
                    self.settings,
                    holder=f"kernel {socket.gethostname()} pid={os.getpid()} {self.session_id}",
                )
                if endpoints.kafka_bootstrap
                else None
            )
            budgets = BudgetLedger(ledger.engine)
            try:
                budgets.state("notebook", self.notebook_key)
            except BudgetNotFound:
                budgets.set_budget("notebook", self.notebook_key, NO_LIMIT_MICROS)
            from wflo_jupyter.gateway.wiring import build_gateway

            self.gateway, self.cache = build_gateway(
                budgets,
                home=self.settings.home,
                redis_url=endpoints.redis_url,
                simulated=self.settings.provider == "mock",
                price_overrides=self.price_overrides,
                on_missing=self._note_once,
            )
            self.gateway.on_ledger_outage = health.suspect
            if self.cache is not None:
                self.cache.watch_outages(self._outage_notice, local_address(self.settings, "redis"))
            activities = StepActivities(
                ledger,
                lambda image, _session: self.sandbox_for(image),
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
                    readdress=local_address(self.settings, "temporal"),
                    notice=self._outage_notice,
                )
            except Exception:
                loop.stop()
                health.close()
                ledger.close()
                raise
            if relay is not None:
                relay.start()
            self.session_events.attach(ledger, relay.wake if relay else None)
            self.sandboxes.ensure_watchdog()
            self.endpoints, self.ledger, self.runner, self.relay, self.loop = (
                endpoints,
                ledger,
                runner,
                relay,
                loop,
            )
            self.budgets, self.ledger_health = budgets, health
            self._started = True

    # -- steps ------------------------------------------------------------------------------
    def steps(self) -> list[StepSummary]:
        """This session's steps, in order."""
        self.start()
        assert self.ledger is not None
        return [
            StepSummary(
                step_id=row.id,
                seq=row.seq,
                name=row.name,
                status=row.status,
                exit_reason=row.exit_reason,
                duration_ms=row.duration_ms,
                cost_micros=row.cost_micros,
                workflow_id=row.workflow_id,
            )
            for row in self.ledger.steps(self.session_id)
        ]

    def status_rows(self) -> list[tuple[str, str]]:
        """(engine, where) for ``%wflo status``: the version, each engine's address, the
        image, the id."""
        from wflo_jupyter.core.version import __version__

        self.start()
        endpoints = self.endpoints
        assert endpoints is not None
        return [
            ("wflo-jupyter", __version__),
            ("postgres", self._ledger_status(endpoints.database_url.split("@")[-1])),
            ("temporal", self._temporal_status()),
            ("redis", self._redis_status(endpoints.redis_url)),
            ("kafka", endpoints.kafka_bootstrap or "not configured (events stay in the outbox)"),
            ("docker", endpoints.docker_host or "local engine"),
            ("image", endpoints.runtime_image),
            ("session", self.session_id),
        ]

    def temporal_ui(self) -> tuple[str | None, str]:
        """The Temporal web UI's address (None when unknown) and the namespace."""
        from wflo_jupyter.stack.settings import temporal_ui_url

        try:
            ui = temporal_ui_url(self.settings)
        except Exception as exc:  # the stack file unreadable: no links, nothing else lost
            log.info("Temporal UI address unknown: %s", exc)
            ui = None
        return ui, self.settings.temporal_namespace

    def _ledger_status(self, where: str) -> str:
        """The ledger's address, and since when it is unreachable during an outage."""
        health = self.ledger_health
        return _where(where, health.down_since if health is not None else None)

    def _temporal_status(self) -> str:
        """Temporal's address now (it may have moved), and since when it is unreachable."""
        runner = self.runner
        assert runner is not None
        return _where(runner.address, runner.outages.down_since)

    def _redis_status(self, url: str | None) -> str:
        """The cache's Redis, and since when it is unreachable."""
        if url is None or self.cache is None:
            return url or "not configured"
        from wflo_jupyter.cache.redis_client import describe_redis

        return _where(describe_redis(self.cache.client), self.cache.down_since)

    def doctor(self, timeout_s: float) -> DoctorReport:
        """``%wflo doctor``: what this machine has and lacks, from this kernel's settings;
        nothing is started (the session's own engines need not be up)."""
        from wflo_jupyter.core.version import __version__
        from wflo_jupyter.doctor import run_doctor

        return run_doctor(self.settings, timeout_s=timeout_s, version=__version__)

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

    def _outage_notice(self, text: str) -> None:
        """An engine outage's notice (any thread): into the running cell, else kept for
        the next one."""
        log.warning("%s", text)
        sink = self._note_sink
        if sink is not None:
            sink(text)
        else:
            self._outage_notices.append(text)

    def set_price_overrides(self, overrides: dict[str, Any]) -> None:
        """``%config WfloMagics.prices``: used for the next calls (ConfigError if bad)."""
        if overrides == self.price_overrides:
            return
        if self.gateway is not None:
            self.gateway.prices.set_overrides(overrides or None)
        self.price_overrides = dict(overrides)

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, relay, loop and watchdog; remove the sandbox containers; close
        connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.close_meters()
            try:
                if self.runner is not None:
                    self.runner.close()
            finally:
                self.sandboxes.close()  # its sandbox.stopped events, drained below
                self.session_events.close()
                if self.gateway is not None:
                    with contextlib.suppress(Exception):
                        self.gateway.close()
                if self.cache is not None:
                    with contextlib.suppress(Exception):
                        self.cache.close()
                        self.cache.client.close()
                if self.relay is not None:  # drains for up to WFLO_RELAY_DRAIN_S
                    with contextlib.suppress(Exception):
                        self.relay.stop()
                if self.ledger_health is not None:
                    self.ledger_health.close()
                if self.ledger is not None:
                    with contextlib.suppress(Exception):
                        self.ledger.close_session(self.session_id)
                    self.ledger.close()
                if self.loop is not None:
                    self.loop.stop()


def _where(address: str, down_since: float | None) -> str:
    """``address``, and since when it is unreachable during an outage."""
    if down_since is None:
        return address
    return f"{address}: unreachable since {time.strftime('%H:%M:%S', time.localtime(down_since))}"


def _connect_ledger(url: str) -> Ledger:
    """The session's ledger; unreachable, the one line a refused cell shows."""
    from wflo_jupyter.core.errors import LedgerUnavailable
    from wflo_jupyter.ledger.health import ledger_address, refusal_line
    from wflo_jupyter.ledger.store import Ledger

    try:
        return Ledger.connect(url)
    except LedgerUnavailable:
        raise LedgerUnavailable(refusal_line(ledger_address(url))) from None
