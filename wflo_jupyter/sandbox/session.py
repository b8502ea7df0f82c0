"""``SandboxSession``: one long-lived sandboxed agent per kernel session, host side.

The public class. Its sandbox's life (started lazily through an ``AgentLauncher``,
replaced when lost, idle stop, ``close()``) is ``sandbox.lifecycle``; this module runs
cells on it: one ``sandbox.cell_run.CellRun`` per cell over the framed channel, with
timeouts (interrupt, then kill after a grace period), user interrupts, a cell re-run
once in a new sandbox when the old one had died before the cell started, what a lost
sandbox means for the cell (``sandbox.outcomes``), ``--fresh`` throwaway sandboxes and
the agent's LLM calls (``sandbox.llm_relay``).

Isolation backends (``sandbox.backend``: ``AgentLauncher`` -> ``AgentHandle``; the
channel, protocol, timeouts and death detection are the same for all of them):

- ``sandbox.docker_backend.DockerLauncher`` (``isolation == "docker"``, the default): a
  hardened container (same hardening as ``docker_engine.hardened_options``, plus the
  read-only agent and socket binds and ``--init``);
- ``sandbox.bwrap.BubblewrapLauncher`` (``"bubblewrap"``): the agent under ``bwrap``
  with the host's ``python3``; weaker, and every cell says so;
- ``sandbox.isolation.UnisolatedLauncher`` (``"unisolated"``): a plain host subprocess,
  only when explicitly requested; every cell says it is not isolated.

Thread model: ``execute``/``start``/``restart``/``stop_if_idle`` serialise on one lock;
``interrupt()`` and ``close()`` may be called from any thread while a cell runs.

Also importable from here (the session's API, used by callers and tests):
``SandboxLimits`` and ``ExecResult`` (``sandbox.types``), ``default_socket_base``
(``sandbox.socket_dirs``) and ``reap_orphans`` (``sandbox.orphans``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox import outcomes
from wflo_jupyter.sandbox.agent.protocol import Frame, ProtocolError
from wflo_jupyter.sandbox.cell_run import CellRequest, CellRun, DisplayCallback, StreamCallback
from wflo_jupyter.sandbox.channel import Box
from wflo_jupyter.sandbox.lifecycle import SandboxLifecycle
from wflo_jupyter.sandbox.orphans import reap_orphans
from wflo_jupyter.sandbox.socket_dirs import default_socket_base
from wflo_jupyter.sandbox.types import DEFAULT_OUTPUT_CAP, ExecResult, SandboxLimits
from wflo_jupyter.sandbox.values import ValueTransferError, encode_inputs


class SandboxSession(SandboxLifecycle):
    """A persistent sandbox: one container (or other isolated agent) reused by every cell.

    Started lazily by the first ``execute`` (or eagerly by ``start()``, e.g. from a
    background thread after ``%load_ext``). A sandbox lost to a timeout kill, an OOM
    kill, a dead agent or ``stop_if_idle`` is replaced by the next ``execute``.

    Constructed as ``SandboxLifecycle`` (``client`` or ``launcher``, ``session_id``,
    ``image``, ``limits``, timeouts, ...).
    """

    _fresh_running: SandboxSession | None = None  # the throwaway sandbox of run_fresh

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running cell (any thread). If the cell does not
        stop within the grace period, its container is killed. True if a cell was running."""
        fresh = self._fresh_running
        if fresh is not None:
            return fresh.interrupt()
        box, cell = self._box, self._running_cell
        if box is None or cell is None:
            return False
        cell.interrupt_requested = time.monotonic()
        with contextlib.suppress(OSError, ProtocolError):
            box.send({"type": "interrupt", "id": cell.id})
        return True

    def ping(self, timeout_s: float = 5.0) -> float:
        """Round trip of a ``ping`` frame to the agent in seconds (starts the container)."""
        with self._lock:
            if self._box is None:
                self._box = self._launch()
            box = self._box
            ping_id = uuid.uuid4().hex
            started = time.perf_counter()
            box.send({"type": "ping", "id": ping_id})
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for frame in box.read(deadline - time.monotonic()):
                    if frame["type"] == "pong" and frame.get("id") == ping_id:
                        return time.perf_counter() - started
            raise SandboxError(f"the sandbox agent did not answer a ping within {timeout_s:g} s")

    # -- cells --------------------------------------------------------------------------

    def execute(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        encoded_inputs: Mapping[str, Mapping[str, str]] | None = None,
        outputs: Sequence[str] = (),
        timeout_s: float = 60.0,
        on_stream: StreamCallback | None = None,
        on_display: DisplayCallback | None = None,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        """Run ``code`` in the session's namespace; stream output through the callbacks.

        Never raises for what the code does (errors, timeouts, limits, a dead agent are in
        the result). Raises ``SandboxError`` when no container could be started and
        ``ValueTransferError`` when an ``inputs`` value cannot be pickled.
        ``encoded_inputs``: the inputs already encoded (``encode_inputs``) elsewhere: the
        kernel of a step a ``wflo worker`` runs.
        """
        if encoded_inputs is not None:
            payload = {name: dict(value) for name, value in encoded_inputs.items()}
        else:
            payload = encode_inputs(inputs or {})
        with self._lock:
            self._busy = True
            try:
                request = CellRequest(
                    code, payload, list(outputs), timeout_s, on_stream, on_display, output_cap
                )
                return self._execute(request, limits)
            finally:
                self._running_cell = None
                self._busy = False
                self._last_used = time.monotonic()

    def run_fresh(self, code: str, **kwargs: Any) -> ExecResult:
        """``--fresh``: run ``code`` in a throwaway container (same image, limits and agent;
        none of this session's state), removed afterwards. Same arguments as ``execute``."""
        limits = kwargs.pop("limits", None) or self.limits
        fresh = SandboxSession(
            self.client,
            self.session_id,
            image=self.image,
            limits=limits,
            socket_base=self.socket_base,
            role="fresh",
            ready_timeout_s=self.ready_timeout_s,
            interrupt_grace_s=self.interrupt_grace_s,
            agent_dir=self.agent_dir,
            launcher=self.launcher,
        )
        fresh.llm_handler = self.llm_handler
        fresh.llm_fast_path = self.llm_fast_path
        self._fresh_running = fresh
        try:
            return fresh.execute(code, **kwargs)
        finally:
            self._fresh_running = None
            fresh.close()

    def _execute(self, request: CellRequest, limits: SandboxLimits | None) -> ExecResult:
        result = ExecResult(ok=False, exit_reason="error", isolation=self.isolation)
        parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        try:
            return self._run_cell(result, parts, request, limits)
        finally:
            result.stdout = "".join(parts["stdout"])
            result.stderr = "".join(parts["stderr"])

    def _run_cell(
        self,
        result: ExecResult,
        parts: dict[str, list[str]],
        request: CellRequest,
        limits: SandboxLimits | None,
        retried: bool = False,
    ) -> ExecResult:
        """One cell on the session's sandbox. A sandbox that turns out to have died before
        the cell started (no ``accepted`` frame: the cell never ran) is replaced and the
        cell runs once more in the new one (``retried``)."""
        started = time.monotonic()
        if self._lost_notice:
            result.notices.append(self._lost_notice)
            result.state_lost = True
            self._lost_notice = None
        box = self._box
        if box is not None and (box.handle.known_dead() or not box.channel_alive()):
            self._replace_dead(box, result)
            box = None
        if box is None:
            box = self._box = self._launch(limits)
        elif limits is not None and limits != box.limits:
            self._apply_limits(box, limits, result)
        if box.handle.notice and box.handle.notice not in result.notices:
            result.notices.insert(0, box.handle.notice)
        result.container_id = box.container_id
        cell = CellRun(
            box,
            request,
            result,
            parts,
            started=started,
            grace_s=self.interrupt_grace_s,
            serve_llm=self._serve_llm,
        )
        try:
            cell.send()
        except ProtocolError as exc:
            raise ValueTransferError("inputs", f"cannot send the cell: {exc}") from None
        except OSError as exc:
            if self._died_before_start(exc, accepted=False, retried=retried):
                self._replace_dead(box, result)
                return self._run_cell(result, parts, request, limits, retried=True)
            return self._lost(box, result, started, exc)
        self._running_cell = cell
        end = cell.wait()
        if end.how == "stuck":
            return self._kill_stuck(box, result, started, request.timeout_s, cell.interrupted_by)
        if end.error is not None:
            if self._died_before_start(end.error, accepted=cell.accepted, retried=retried):
                self._running_cell = None
                self._replace_dead(box, result)
                return self._run_cell(result, parts, request, limits, retried=True)
            return self._lost(box, result, started, end.error)
        return result

    def _serve_llm(self, box: Box, frame: Frame) -> None:
        """Hand an ``llm_request`` to the gateway on a worker thread (the read loop must
        keep delivering output); every request gets exactly one answer."""
        self._llm.serve(box, frame, self.llm_handler, self.llm_fast_path)

    def drain_llm(self, timeout_s: float = 10.0) -> None:
        """Wait for LLM calls still being recorded (a cache hit answers before its ledger
        row is written), so a finished step's report includes every call."""
        self._llm.drain(timeout_s)

    # -- what a cell's end does to the sandbox ------------------------------------------

    def _kill_stuck(
        self,
        box: Box,
        result: ExecResult,
        started: float,
        timeout_s: float,
        interrupted_by: str | None,
    ) -> ExecResult:
        """The cell ignored the interrupt for the whole grace period: kill the container."""
        self._tell("killed", box, reason="stuck", exit_code=None, during_cell=True)
        box.kill()
        self._discard()
        return outcomes.stuck(result, started, timeout_s, interrupted_by, self.interrupt_grace_s)

    def _died_before_start(self, exc: Exception, *, accepted: bool, retried: bool) -> bool:
        return outcomes.died_before_start(
            exc, accepted=accepted, retried=retried, closing=self._closing
        )

    def _lost(self, box: Box, result: ExecResult, started: float, exc: Exception) -> ExecResult:
        """The channel ended or broke while a cell ran: find out why, drop the container."""
        if outcomes.channel_corrupted(exc):
            box.kill()
        code, oom = box.wait_exit(3.0)
        self._tell_death(box, code, oom, during_cell=True)
        self._discard()
        return outcomes.lost(
            result,
            started=started,
            exc=exc,
            code=code,
            oom=oom,
            closing=self._closing,
            memory_bytes=box.limits.memory_bytes,
        )


__all__ = [
    "ExecResult",
    "SandboxLimits",
    "SandboxSession",
    "default_socket_base",
    "reap_orphans",
]
