"""One cell on one running sandbox: the ``exec`` frame out, then the frames back until the
cell's ``result``, with the timeout (interrupt first, then give up after a grace period)
and a user interrupt on the way.

``CellRun.wait`` collects the output (through the callbacks, or into the result), hands
``llm_request`` frames to the session, and ends with a ``CellEnd``: the result is in, the
cell ignored the interrupt (``stuck``), or the channel ended or broke (``broken``). What
to do with the sandbox then is the session's business.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from wflo_jupyter.sandbox.agent.protocol import Frame, ProtocolError
from wflo_jupyter.sandbox.channel import Box
from wflo_jupyter.sandbox.outcomes import finish
from wflo_jupyter.sandbox.types import MB, ExecResult

StreamCallback = Callable[[str, str], None]
DisplayCallback = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class CellRequest:
    """What to run and how (``inputs`` already encoded for the channel)."""

    code: str
    inputs: dict[str, dict[str, str]]
    outputs: list[str]
    timeout_s: float
    on_stream: StreamCallback | None
    on_display: DisplayCallback | None
    output_cap: int


@dataclass(frozen=True)
class CellEnd:
    """How ``CellRun.wait`` ended: ``result`` (in the ``ExecResult``), ``stuck`` (the cell
    did not stop within the grace period after an interrupt) or ``broken`` (``error``:
    the channel ended or broke)."""

    how: Literal["result", "stuck", "broken"]
    error: Exception | None = None


class CellRun:
    """One cell on ``box``. ``parts`` collects stdout / stderr text; ``started`` is when
    the session began this cell (the timeout counts from then)."""

    def __init__(
        self,
        box: Box,
        request: CellRequest,
        result: ExecResult,
        parts: dict[str, list[str]],
        *,
        started: float,
        grace_s: float,
        serve_llm: Callable[[Box, Frame], None],
    ) -> None:
        self.box = box
        self.request = request
        self.result = result
        self.parts = parts
        self.started = started
        self.grace_s = grace_s
        self.serve_llm = serve_llm
        self.id = uuid.uuid4().hex
        self.interrupt_requested: float | None = None
        """When an interrupt was asked for (``SandboxSession.interrupt``, any thread)."""
        self.interrupted_by: str | None = None
        """``user`` or ``timeout`` once the host interrupted the cell."""
        self.accepted = False
        """The agent acknowledged the cell: it ran, or began to."""
        self._received = 0
        self._callback_failed = False

    def send(self) -> None:
        """Send the ``exec`` frame (``ProtocolError``: it cannot be encoded; ``OSError``:
        the channel is gone)."""
        request = self.request
        self.box.send(
            {
                "type": "exec",
                "id": self.id,
                "code": request.code,
                "inputs": request.inputs,
                "outputs": request.outputs,
                "output_cap": int(request.output_cap),
            }
        )

    def _send_interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self.box.send({"type": "interrupt", "id": self.id})

    def wait(self) -> CellEnd:
        """Read frames until the cell ends (see ``CellEnd``)."""
        box = self.box
        deadline = self.started + self.request.timeout_s
        while True:
            now = time.monotonic()
            requested = self.interrupt_requested
            if requested is not None and self.interrupted_by is None:
                self.interrupted_by = "user"
                deadline = requested + self.grace_s
            if now >= deadline:
                if self.interrupted_by is None:
                    self.interrupted_by = "timeout"
                    deadline = now + self.grace_s
                    self._send_interrupt()
                    continue
                return CellEnd("stuck")
            try:
                frames = box.read(min(deadline - now, 0.25))
            except KeyboardInterrupt:  # the kernel was interrupted while waiting
                if self.interrupted_by is None:
                    self.interrupt_requested = time.monotonic()
                    self._send_interrupt()
                    continue
                return CellEnd("stuck")
            except (ProtocolError, OSError) as exc:
                return CellEnd("broken", exc)
            for incoming in frames:
                if self._take(incoming):
                    return CellEnd("result")

    def _take(self, incoming: Frame) -> bool:
        """Handle one frame from the agent; True once it was this cell's result."""
        kind = incoming["type"]
        if kind == "llm_request":
            self.serve_llm(self.box, incoming)
            return False
        if incoming.get("id") != self.id:
            return False
        if kind == "accepted":
            self.accepted = True
            self.box.cells += 1  # cells that ran here: the state a death would lose
        elif kind == "stream":
            self._stream(incoming)
        elif kind == "display":
            self._display(incoming)
        elif kind == "result":
            self._result(incoming)
            return True
        return False

    def _stream(self, incoming: Frame) -> None:
        text = str(incoming.get("text", ""))
        name = "stderr" if incoming.get("name") == "stderr" else "stdout"
        self._received += len(text)
        host_cap = int(self.request.output_cap) + MB  # the agent enforces the cap
        if self._received > host_cap:
            return
        self.parts[name].append(text)
        if self.request.on_stream is not None:
            try:
                self.request.on_stream(name, text)
            except Exception as exc:
                self._failed(exc)

    def _display(self, incoming: Frame) -> None:
        data = incoming.get("data")
        metadata = incoming.get("metadata")
        if not isinstance(data, dict):
            return
        metadata = metadata if isinstance(metadata, dict) else {}
        if self.request.on_display is None:
            self.result.displays.append((data, metadata))
            return
        try:
            self.request.on_display(data, metadata)
        except Exception as exc:
            self._failed(exc)

    def _result(self, incoming: Frame) -> None:
        result = self.result
        finish(result, incoming, self.started, self.request.timeout_s, self.interrupted_by)
        if not result.ok:
            hint = self.box.handle.explain_error(result.ename, self.box.limits)
            if hint and not result.evalue:
                result.evalue = hint
            elif hint:
                result.notices.append(hint)

    def _failed(self, exc: Exception) -> None:
        """An output callback raised: one notice for the first failure of the cell."""
        if not self._callback_failed:
            self.result.notices.append(f"an output callback failed: {type(exc).__name__}: {exc}")
        self._callback_failed = True


__all__ = ["CellEnd", "CellRequest", "CellRun", "DisplayCallback", "StreamCallback"]
