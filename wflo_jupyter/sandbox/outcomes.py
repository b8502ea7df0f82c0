"""How a cell ended, as an ``ExecResult``: what the agent's ``result`` frame says (ok, an
error, a timeout or a user interrupt that stopped it), or why the session had to give up
on the sandbox (the cell ignored the interrupt; the channel ended or broke: an OOM kill,
a dead agent, a corrupted channel, the session closing).

Pure functions over what the session found out: the session kills, waits for and drops
the sandbox, then asks here what to report.
"""

from __future__ import annotations

import contextlib
import signal
import time

from wflo_jupyter.core.steps import format_size
from wflo_jupyter.sandbox.agent.protocol import ChannelClosed, Frame, ProtocolError
from wflo_jupyter.sandbox.types import ExecResult
from wflo_jupyter.sandbox.values import decode_outputs

AGENT_EXIT_CHANNEL_LOST = 75
"""The agent's exit code when its channel broke or was closed by the cell."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(code - 128).name}"
    return f"exit code {code}"


def channel_corrupted(exc: Exception) -> bool:
    """The channel carried something that is not a frame (the agent may still be alive
    and running something), as opposed to ending."""
    return isinstance(exc, ProtocolError) and not isinstance(exc, ChannelClosed)


def died_before_start(exc: Exception, *, accepted: bool, retried: bool, closing: bool) -> bool:
    """The channel ended before the agent accepted the cell: the sandbox died before
    this cell (between cells, or while it was being sent), so the cell never ran and
    may run in a new sandbox, once. Not when the session is closing, and not for a
    corrupted channel (the agent may be alive and running something)."""
    return not accepted and not retried and not closing and not channel_corrupted(exc)


def finish(
    result: ExecResult,
    frame: Frame,
    started: float,
    timeout_s: float,
    interrupted_by: str | None,
) -> ExecResult:
    """``result`` from the agent's ``result`` frame (``interrupted_by``: ``timeout`` or
    ``user`` when the host interrupted the cell)."""
    result.seconds = time.monotonic() - started
    count = frame.get("execution_count")
    result.execution_count = count if isinstance(count, int) else None
    payloads = frame.get("outputs")
    if isinstance(payloads, dict):
        result.output_payloads = dict(payloads)
        result.outputs, result.output_errors = decode_outputs(payloads)
    if frame.get("ok") is True:
        result.ok = True
        result.exit_reason = "ok"
        return result
    error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
    assert isinstance(error, dict)
    result.ename = str(error.get("ename") or "Error")
    result.evalue = str(error.get("evalue") or "")
    result.traceback = str(error.get("traceback") or "")
    if result.ename == "KeyboardInterrupt" and interrupted_by == "timeout":
        result.exit_reason = "timeout"
        result.ename = "TimeoutError"
        result.evalue = (
            f"the cell ran longer than {timeout_s:g} s and was interrupted; "
            "the session's state is kept"
        )
    elif result.ename == "KeyboardInterrupt" and interrupted_by == "user":
        result.exit_reason = "interrupted"
    else:
        result.exit_reason = "error"
    return result


def stuck(
    result: ExecResult,
    started: float,
    timeout_s: float,
    interrupted_by: str | None,
    grace_s: float,
) -> ExecResult:
    """``result`` of a cell that ignored the interrupt for the whole grace period (its
    sandbox has been killed)."""
    result.seconds = time.monotonic() - started
    result.state_lost = True
    result.ok = False
    if interrupted_by == "user":
        result.exit_reason = "interrupted"
        result.ename = "KeyboardInterrupt"
        result.evalue = (
            f"the cell did not stop within {grace_s:g} s of the interrupt; "
            "the sandbox was killed and its state was lost"
        )
    else:
        result.exit_reason = "timeout"
        result.ename = "TimeoutError"
        result.evalue = (
            f"the cell ran longer than {timeout_s:g} s and did not stop when interrupted; "
            "the sandbox was killed and its state was lost"
        )
    return result


def lost(
    result: ExecResult,
    *,
    started: float,
    exc: Exception,
    code: int | None,
    oom: bool,
    closing: bool,
    memory_bytes: int,
) -> ExecResult:
    """``result`` of a cell whose channel ended or broke (``exc``) while it ran; the
    sandbox ended with ``code`` (None: it had to be killed), ``oom`` if OOM-killed."""
    result.seconds = time.monotonic() - started
    result.ok = False
    result.state_lost = True
    if closing:
        result.exit_reason = "killed"
        result.ename = "SandboxKilled"
        result.evalue = "the sandbox session was closed while the cell ran"
    elif oom:
        result.exit_reason = "oom"
        result.ename = "MemoryLimitExceeded"
        result.evalue = (
            f"memory limit {format_size(memory_bytes)} exceeded (OOM-killed); state was lost"
        )
    elif channel_corrupted(exc):
        result.exit_reason = "agent_died"
        result.ename = "SandboxDied"
        result.evalue = (
            f"the sandbox channel was corrupted ({exc}); the sandbox was killed and state was lost"
        )
    elif code == AGENT_EXIT_CHANNEL_LOST:
        result.exit_reason = "agent_died"
        result.ename = "SandboxDied"
        result.evalue = (
            f"the sandbox agent lost its channel to the host (exit code {code}); state was lost"
        )
    elif code is None:
        result.exit_reason = "agent_died"
        result.ename = "SandboxDied"
        result.evalue = (
            "the sandbox agent closed its channel; the sandbox was killed and state was lost"
        )
    else:
        result.exit_reason = "agent_died"
        result.ename = "SandboxDied"
        result.evalue = f"the sandbox agent died ({describe_exit(code)}); state was lost"
    return result


def death_between_cells(code: int | None, oom: bool, memory_bytes: int) -> str:
    """What ended a sandbox while no cell ran."""
    if oom:
        return f"memory limit {format_size(memory_bytes)} exceeded (OOM-killed)"
    return f"the sandbox agent died ({describe_exit(code)})"


__all__ = [
    "AGENT_EXIT_CHANNEL_LOST",
    "channel_corrupted",
    "death_between_cells",
    "describe_exit",
    "died_before_start",
    "finish",
    "lost",
    "stuck",
]
