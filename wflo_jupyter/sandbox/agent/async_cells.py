"""How a cell's code objects run: frames owned by the cell, top-level ``await`` on a loop.

- compiling: cells compile with ``TOP_LEVEL_AWAIT`` (``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``),
  as in IPython; a code object with the ``CO_COROUTINE`` flag (a top-level ``await``,
  ``async for`` or ``async with``) runs on the session's event loop, any other one is
  simply evaluated: plain cells never touch asyncio (not even its import);
- the loop: ONE per agent, made lazily by the first awaiting cell and set as the main
  thread's current loop. It runs only while an awaiting cell runs (like terminal IPython),
  so ``asyncio.run(...)`` in a plain cell works, and tasks, queues and clients made in one
  cell keep working in the next awaiting cell;
- interrupts: while the loop waits (its own frames or the selector's are current) the
  first SIGINT cancels the cell's task, which unwinds at its ``await`` and the cell
  reports ``KeyboardInterrupt`` (its traceback at that ``await``); while cell or library
  code runs, or at a second SIGINT, ``KeyboardInterrupt`` is raised where it runs, as in
  a plain cell. Either way the loop stays usable and the cell's own task is cancelled;
  tasks it merely started keep running, as they would in IPython;
- frames: the cell's code is called through a tiny trampoline compiled with the cell's
  filename (``<wflo-cell-N>``, line 0, the namespace's globals), so a warning whose
  ``stacklevel`` climbs past the cell still names the cell (and counts as ``__main__``
  for the warning filters) instead of the agent or asyncio. Tracebacks skip it
  (``TRAMPOLINE``).
"""

from __future__ import annotations

import ast
import os
import selectors
import signal
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
"""The compile flag of every cell (``await`` etc. allowed at the top level)."""
CO_COROUTINE = 0x0080
"""``inspect.CO_COROUTINE``, without importing ``inspect`` for plain cells."""
CELL_PREFIX = "<wflo-cell-"
"""Every cell's filename starts with this (``<wflo-cell-N>``)."""
TRAMPOLINE = "<wflo-cell>"
"""``co_name`` of the trampoline frames that call a cell's code."""
UNWIND_S = 2.0
"""After a forced ``KeyboardInterrupt``, how long the cancelled cell task may unwind."""

_TRAMPOLINES = """
def run(run, body, tail, ns):
    run(body, ns)
    return None if tail is None else run(tail, ns)

async def wait(run, body, tail, ns):
    if body.co_flags & 0x80:
        await run(body, ns)
    else:
        run(body, ns)
    if tail is None:
        return None
    return await run(tail, ns) if tail.co_flags & 0x80 else run(tail, ns)
"""
"""The trampolines: a cell's body, then its trailing expression's value (``run`` is
``eval``, passed in: their globals are the cell's namespace, where a cell may rebind
``eval``). Each is flattened onto one line, which becomes line 0 of the cell."""


def _trampoline_codes() -> tuple[types.CodeType, types.CodeType]:
    tree = ast.parse(_TRAMPOLINES, TRAMPOLINE, "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt | ast.expr | ast.arg):
            node.lineno = node.end_lineno = 1
    scope: dict[str, Any] = {}
    exec(compile(tree, TRAMPOLINE, "exec"), scope)
    run, wait = scope["run"].__code__, scope["wait"].__code__
    return (
        run.replace(co_firstlineno=0, co_name=TRAMPOLINE),
        wait.replace(co_firstlineno=0, co_name=TRAMPOLINE),
    )


_RUN_CODE, _WAIT_CODE = _trampoline_codes()
_HERE = os.path.abspath(__file__)


class CellRunner:
    """Runs cells' code objects in ``namespace`` (main thread only)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._interrupts = 0
        self._cancelled_by_interrupt = False
        self._machinery: tuple[str, ...] = ()

    def run(self, body: types.CodeType, tail: types.CodeType | None) -> Any:
        """Run a cell's ``body`` then its trailing expression ``tail``: its value. If
        either awaits at the top level, both run in one task on the loop."""
        filename = body.co_filename
        if body.co_flags & CO_COROUTINE or (tail is not None and tail.co_flags & CO_COROUTINE):
            return self._run_awaiting(body, tail, filename)
        run = types.FunctionType(_trampoline(_RUN_CODE, filename), self.namespace)
        return run(eval, body, tail, self.namespace)

    # the loop ------------------------------------------------------------------------

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The session's loop (made now if there is none or a cell closed it), current."""
        import asyncio

        if self.loop is None or self.loop.is_closed():
            self.loop = asyncio.new_event_loop()
            self._machinery = (os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,)
        asyncio.set_event_loop(self.loop)  # again: asyncio.run() in a cell unsets it
        return self.loop

    def _run_awaiting(
        self, body: types.CodeType, tail: types.CodeType | None, filename: str
    ) -> Any:
        import asyncio

        loop = self.event_loop()
        wait = types.FunctionType(_trampoline(_WAIT_CODE, filename), self.namespace)
        task = loop.create_task(wait(eval, body, tail, self.namespace))
        self._task, self._interrupts, self._cancelled_by_interrupt = task, 0, False
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            value = loop.run_until_complete(task)
        except asyncio.CancelledError as cancelled:
            if not self._cancelled_by_interrupt:
                raise
            interrupt = KeyboardInterrupt()
            raise interrupt.with_traceback(self._trimmed(cancelled.__traceback__)) from None
        except KeyboardInterrupt as interrupt:
            self._settle(loop, task)
            raise interrupt.with_traceback(self._trimmed(interrupt.__traceback__)) from None
        except BaseException:
            self._settle(loop, task)
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
            self._task = None
        if self._interrupts and not self._cancelled_by_interrupt:
            raise KeyboardInterrupt  # it came as the cell ended: still reported
        return value

    def _on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        """SIGINT during an awaiting cell: cancel its task while the loop just waits."""
        self._interrupts += 1
        task, loop = self._task, self.loop
        if self._interrupts > 1 or task is None or loop is None or not self._waiting(frame):
            raise KeyboardInterrupt
        if not task.done():
            self._cancelled_by_interrupt = True
            task.cancel()
        loop.call_soon_threadsafe(_wake)  # the selector resumes its wait after a signal

    def _waiting(self, frame: types.FrameType | None) -> bool:
        """Is ``frame`` the loop's own machinery (so no cell code is running)?"""
        if frame is None:
            return False
        filename = frame.f_code.co_filename
        return filename.startswith(self._machinery) or filename in (_HERE, selectors.__file__)

    def _trimmed(self, tb: types.TracebackType | None) -> types.TracebackType | None:
        """An interrupt's traceback without the loop's (or this file's) frames at its
        end: it ends where the cell's own code was."""
        entries: list[types.TracebackType] = []
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        while entries and self._waiting(entries[-1].tb_frame):
            entries.pop()
        rebuilt = None
        for entry in reversed(entries):
            rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        return rebuilt

    def _settle(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        """The cell failed or a ``KeyboardInterrupt`` left the loop: end the cell's task."""
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" log later
            return
        import asyncio

        task.cancel()
        try:
            loop.run_until_complete(asyncio.wait({task}, timeout=UNWIND_S))
        except BaseException:  # a further interrupt: it unwinds in the next awaiting cell
            return
        if task.done() and not task.cancelled():
            task.exception()


def _trampoline(code: types.CodeType, filename: str) -> types.CodeType:
    return code.replace(co_filename=filename)


def _wake() -> None:
    """Scheduled to make the loop look at a cancelled task at once."""


def cell_traceback(
    tb: types.TracebackType | None, agent_files: tuple[str, ...]
) -> types.TracebackType | None:
    """``tb`` from the first frame of cell code on; without one, ``tb`` past its leading
    frames of ``agent_files`` (absolute paths) and trampolines."""
    entry = tb
    while entry is not None:
        code = entry.tb_frame.f_code
        if code.co_filename.startswith(CELL_PREFIX) and code.co_name != TRAMPOLINE:
            return entry
        entry = entry.tb_next
    while tb is not None and (
        tb.tb_frame.f_code.co_name == TRAMPOLINE
        or os.path.abspath(tb.tb_frame.f_code.co_filename) in agent_files
    ):
        tb = tb.tb_next
    return tb


__all__ = ["CO_COROUTINE", "TOP_LEVEL_AWAIT", "CellRunner", "cell_traceback"]
