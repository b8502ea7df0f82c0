"""The cell kernel: one persistent namespace in which ``exec`` frames run, one at a time.

- ONE persistent namespace (a fresh ``__main__`` module), so names and imports survive
  between cells; cells compile IPython-style: a trailing expression (without ``;``) is
  displayed as the cell's result;
- each cell: ``--in`` values loaded (pickled by the trusted host), the code run, open
  figures sent, output synced, ``--out`` values encoded, then one ``result`` frame;
- top-level ``await``/``async for``/``async with`` (IPython's semantics) run on the
  session's persistent event loop, and the cell's code is called so that warnings and
  tracebacks name ``<wflo-cell-N>``, never the agent: ``async_cells.py``;
- interrupts: user code runs in the main thread with Python's default SIGINT handler,
  agent threads block SIGINT, so an ``interrupt`` frame (or SIGINT sent to the
  container) raises ``KeyboardInterrupt`` in the cell and the namespace is kept (an
  awaiting cell's handler: ``async_cells.py``);
- warnings: DeprecationWarnings of the cells' own code show (as in IPython), and each
  cell's warnings show once per line of that cell, even if an earlier cell had the same.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import linecache
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import async_cells, capture, channel, display, formats, out_values, protocol, runtime
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    async_cells, capture = load("async_cells"), load("capture")
    channel, display = load("channel"), load("display")
    formats, out_values = load("formats"), load("out_values")
    protocol, runtime = load("protocol"), load("runtime")


def sigint_outside_cell(signum: int, frame: types.FrameType | None) -> None:
    """SIGINT while the agent itself (not a cell) runs: ignored."""


class Kernel:
    """Runs cells in one persistent ``__main__`` namespace (main thread only)."""

    def __init__(self, sender: channel.Sender) -> None:
        self.sender = sender
        self.budget = capture.OutputBudget()
        self.execution_count = 0
        self.current_id: str | None = None
        self._requested_interrupt: str | None = None
        self._main_ident = threading.get_ident()
        self.module = types.ModuleType("__main__")
        self.namespace: dict[str, Any] = self.module.__dict__
        self.namespace["__builtins__"] = builtins
        self.cells = async_cells.CellRunner(self.namespace)
        self.capture: capture.OutputCapture | None = None
        self.channel_check: Callable[[], bool] | None = None
        self.stdout: io.TextIOWrapper | None = None
        self.stderr: io.TextIOWrapper | None = None
        self.display = display.Display(
            sender, self.budget, lambda: self.current_id, self._sync_output
        )

    # setup ---------------------------------------------------------------------------

    def install(self) -> None:
        """Capture fds 1/2, replace ``sys.std*``, ``__main__``, ``display`` and pyplot."""
        self.capture = capture.OutputCapture(self.sender, self.budget, lambda: self.current_id)
        self.stdout = self._text_stream(1)
        self.stderr = self._text_stream(2)
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
        for name in ("stdout", "stderr", "stdin"):  # libraries that use sys.__stdout__
            setattr(sys, f"__{name}__", getattr(sys, name))
        sys.modules["__main__"] = self.module
        sys.argv = [""]
        builtins.display = self.display.display_builtin  # type: ignore[attr-defined]
        builtins.input = _no_input
        os.environ.setdefault("MPLBACKEND", "Agg")
        sys.meta_path.insert(0, display.PyplotHook(self.display.patch_pyplot))
        # like IPython: deprecations raised by the cells' own code (module __main__) show
        warnings.filterwarnings("default", category=DeprecationWarning, module=r"__main__\Z")
        sys.path.insert(0, "")  # like a REPL: modules in the working directory import
        signal.signal(signal.SIGINT, sigint_outside_cell)
        runtime.agent_thread("wflo-agent-flush", self._flush_loop)

    @staticmethod
    def _text_stream(fd: int) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        return io.TextIOWrapper(
            io.BufferedWriter(raw),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
            write_through=True,
        )

    def _flush_loop(self) -> None:
        """Partial lines left in the Python-level buffers reach the pipe within a tick;
        and a channel fd closed (or replaced) by a cell ends the agent within a tick."""
        runtime.block_sigint()
        while True:
            time.sleep(capture.FLUSH_INTERVAL_S)
            if self.channel_check is not None and not self.channel_check():
                self.sender.diag("wflo-agent: a cell closed the channel; exiting")
                os._exit(channel.EXIT_CHANNEL_LOST)
            if self.current_id is None:
                continue
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.buffer.flush()

    def _flush_std(self) -> None:
        for stream in {
            id(s): s for s in (self.stdout, self.stderr, sys.stdout, sys.stderr)
        }.values():
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()

    def _sync_output(self) -> None:
        self._flush_std()
        if self.capture is not None:
            self.capture.sync()

    # interrupts ----------------------------------------------------------------------

    def interrupt(self, cell_id: str | None) -> None:
        """From the channel thread: raise KeyboardInterrupt in cell ``cell_id``."""
        target = cell_id if cell_id is not None else self.current_id
        if target is None:
            return
        self._requested_interrupt = target
        if self.current_id == target:
            signal.pthread_kill(self._main_ident, signal.SIGINT)

    @contextlib.contextmanager
    def _user_signals(self, cell_id: str) -> Iterator[None]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if self._requested_interrupt == cell_id:
                raise KeyboardInterrupt
            yield
        finally:
            signal.signal(signal.SIGINT, sigint_outside_cell)

    # cells ---------------------------------------------------------------------------

    def run(self, frame: dict[str, Any]) -> None:
        """One ``exec`` frame -> stream/display frames -> one ``result`` frame."""
        cell_id = str(frame.get("id"))
        self.execution_count += 1
        count = self.execution_count
        cap = frame.get("output_cap")
        self.budget.reset(cap if isinstance(cap, int) else capture.DEFAULT_OUTPUT_CAP)
        if self.capture is not None:
            self.capture.ensure_stdio()
        self._restore_std_streams()
        self.current_id = cell_id
        error: dict[str, Any] | None = None
        outputs: dict[str, Any] = {}
        try:
            try:
                error = self._load_inputs(frame.get("inputs") or {})
                if error is None:
                    error = self._run_code(str(frame.get("code") or ""), count, cell_id)
                try:
                    self.display.flush_figures()
                except Exception as exc:
                    error = error or _error_dict(exc)
            finally:
                self._sync_output()
            if error is None:
                names = frame.get("outputs") or []
                outputs = out_values.encode_outputs([str(n) for n in names], self.namespace)
        except KeyboardInterrupt:  # arrived in agent code, just after the cell's own code
            error = error or {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ""}
        finally:
            self.current_id = None
        self.sender.send(
            {
                "type": "result",
                "id": cell_id,
                "ok": error is None,
                "error": error,
                "outputs": outputs,
                "execution_count": count,
            }
        )

    def _restore_std_streams(self) -> None:
        for attr, mine in (("stdout", self.stdout), ("stderr", self.stderr)):
            current = getattr(sys, attr)
            if current is None or getattr(current, "closed", False):
                setattr(sys, attr, mine)

    def _load_inputs(self, inputs: dict[str, Any]) -> dict[str, Any] | None:
        for name, payload in inputs.items():
            try:
                if not str(name).isidentifier():
                    raise ValueError(f"{name!r} is not a Python identifier")
                if not isinstance(payload, dict) or payload.get("format") != "pickle":
                    raise ValueError("inputs must come as pickle")
                value = pickle.loads(protocol.b64decode(str(payload.get("data"))))
            except Exception as exc:
                return {
                    "ename": type(exc).__name__,
                    "evalue": f"cannot load input {name}: {formats.one_line(exc)}",
                    "traceback": "",
                }
            self.namespace[str(name)] = value
        return None

    def _run_code(self, code: str, count: int, cell_id: str) -> dict[str, Any] | None:
        filename = f"<wflo-cell-{count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
            expression: ast.Expression | None = None
            if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_with_semicolon(code):
                last = tree.body.pop()
                assert isinstance(last, ast.Expr)
                expression = ast.Expression(last.value)
            flags = async_cells.TOP_LEVEL_AWAIT
            body = compile(tree, filename, "exec", flags=flags)
            tail = (
                None if expression is None else compile(expression, filename, "eval", flags=flags)
            )
        except (SyntaxError, ValueError, OverflowError) as exc:  # the parser's frames: noise
            return _error_dict(exc.with_traceback(None))
        self.namespace.pop("__warningregistry__", None)  # each cell: its warnings show anew
        try:
            with self._user_signals(cell_id):
                value = self.cells.run(body, tail)
        except SystemExit as exc:
            if exc.code in (None, 0):
                return None
            return _error_dict(exc, skip_agent_frames=True)
        except BaseException as exc:
            return _error_dict(exc, skip_agent_frames=True)
        if value is not None:
            self.namespace["_"] = value
            try:
                data, md = display.mimebundle(value)
                self.display.publish(data, md, kind="execute_result")
            except Exception as exc:
                return _error_dict(exc)
        return None


def _ends_with_semicolon(code: str) -> bool:
    for line in reversed(code.splitlines()):
        stripped = line.split("#", 1)[0].strip() if "#" in line else line.strip()
        if stripped:
            return stripped.endswith(";")
    return False


def _error_dict(exc: BaseException, skip_agent_frames: bool = False) -> dict[str, Any]:
    tb = exc.__traceback__
    if skip_agent_frames:
        tb = async_cells.cell_traceback(tb, (os.path.abspath(__file__), async_cells.__file__))
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        text = f"{type(exc).__name__} (the traceback could not be formatted)\n"
    try:
        evalue = str(exc)
    except Exception:
        evalue = "<str() of the exception failed>"
    return {"ename": type(exc).__name__, "evalue": evalue, "traceback": text}


def _no_input(prompt: object = "") -> str:
    raise EOFError("input() is not available inside a %%wflo sandbox cell (no stdin)")
