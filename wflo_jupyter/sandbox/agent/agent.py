"""The sandbox agent: runs ``%%wflo`` cells inside the session container (stdlib only).

Started as ``python3 -I /opt/wflo-agent/agent.py /run/wflo/<socket>`` (the per-container
token in ``WFLO_AGENT_TOKEN``), it connects back to the host over the Unix socket, says
``ready`` and then runs ``exec`` frames one at a time. It owns:

- ONE persistent namespace (a fresh ``__main__`` module), so names and imports survive
  between cells; cells compile IPython-style: a trailing expression (without ``;``) is
  displayed as the cell's result;
- live output: fds 1 and 2 are pipes read by a thread, so ``print``, C extensions and
  subprocesses are all captured; text is sent line by line, and a partial line after
  at most ``FLUSH_INTERVAL_S``; per-cell output is capped (then one notice, the rest is
  dropped while the cell keeps running);
- rich output: the ``display()`` builtin (``_repr_mimebundle_`` and ``_repr_*_``
  methods, always ``text/plain``) and matplotlib figures (Agg backend; every open figure
  is sent as ``image/png`` at ``plt.show()`` and at the end of the cell, then closed);
- interrupts: user code runs in the main thread with Python's default SIGINT handler,
  channel and capture threads block SIGINT, so an ``interrupt`` frame (or SIGINT sent
  to the container) raises ``KeyboardInterrupt`` in the cell and the namespace is kept;
- values: ``--in`` values arrive pickled (the host is trusted); ``--out`` values leave
  only as JSON, bytes, ``.npy`` (``allow_pickle=False``) or Arrow IPC, anything else is
  refused with a one-line error naming the variable and its type.
- LLM calls: a loopback HTTP proxy (``127.0.0.1:<port>``) that the official ``openai``
  and ``anthropic`` SDKs reach through ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` set in
  the agent's own environment, with a per-session token as their API keys; every call
  becomes one ``llm_request`` frame and the host's answer frames are written back to the
  SDK, streams chunk by chunk (``protocol`` documents the frames). Provider keys never
  enter the sandbox.

Hardening of the channel "as far as practical": the socket lives on a high, close-on-exec
fd that subprocesses never inherit, reading/writing it happens only in agent threads,
and a cell that closes or corrupts it just kills its own session (the host notices).
"""

from __future__ import annotations

import ast
import builtins
import codecs
import contextlib
import errno
import fcntl
import importlib.machinery
import io
import json
import linecache
import os
import pickle
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any


def _load_protocol() -> types.ModuleType:
    """``protocol.py`` next to this file, loaded by path (no package inside the sandbox;
    plain ``exec`` because ``importlib.util`` adds milliseconds to every start)."""
    name = "_wflo_agent_protocol"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
    with open(path, encoding="utf-8") as source:
        code = compile(source.read(), path, "exec")
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module


if TYPE_CHECKING or __package__:
    from . import protocol
else:  # run as a script inside the container
    protocol = _load_protocol()

DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
FLUSH_INTERVAL_S = 0.05
"""A partial line (no newline yet) is sent after at most this long."""
STREAM_CHUNK_CHARS = 64 * 1024
SYNC_TIMEOUT_S = 5.0
EXIT_CHANNEL_LOST = 75
"""Exit code when the channel to the host broke or a cell closed it."""
HIGH_FD = 900
"""Agent-private fds (channel socket, pipe read ends) are moved at or above this number."""
OUTPUT_LIMIT_BYTES = protocol.MAX_FRAME_BYTES - 1024 * 1024
"""The encoded ``--out`` values of one cell must fit in one frame, with room to spare."""

_BINARY_MIMES = ("image/png", "image/jpeg")
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


# ---------------------------------------------------------------------------------------
# small helpers


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` at or above ``HIGH_FD``; ``fd`` is closed."""
    try:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    except OSError:  # RLIMIT_NOFILE below HIGH_FD: any free number will do
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _block_sigint() -> None:
    """Called first in every agent thread: SIGINT is for the main thread (user code)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


_diag_fd = 2
"""Where agent diagnostics go: the container's original stderr (``docker logs``), moved
to a private fd once fds 1/2 are captured; never a cell's output."""


def diag(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(_diag_fd, (message.rstrip("\n") + "\n").encode("utf-8", "replace"))


def _agent_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """A daemon thread whose unexpected death ends the agent loudly (the host then
    reports a dead agent) instead of leaving it half-working."""

    def run() -> None:
        try:
            target()
        except BaseException:
            diag(f"wflo-agent: thread {name} failed\n{traceback.format_exc()}")
            os._exit(70)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def type_name(value: Any) -> str:
    """``list``, ``set``, ``pandas.core.frame.DataFrame``, ... (for one-line errors)."""
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module == "builtins" else f"{module}.{qualname}"


def format_bytes(count: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= factor:
            return f"{count / factor:g} {unit}"
    return f"{count} bytes"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------
# channel: one writer thread, one reader thread


class Sender:
    """Serialises frames in the calling thread; ONE thread writes them to the socket, so
    an interrupt in the main thread can never leave half a frame on the wire.

    ``send_now`` writes from the calling thread instead, under the same lock as the
    writer thread: for the LLM proxy's threads (SIGINT blocked, never interrupted), whose
    requests then skip a thread hand-off on the way to the host."""

    def __init__(self, sock: socket.socket, diag: Callable[[str], None]) -> None:
        self._sock = sock
        self.diag = diag
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self.on_lost: Callable[[], None] | None = None
        """Called when the socket broke, just before the agent exits."""
        self._thread = _agent_thread("wflo-agent-send", self._run)

    def send(self, frame: dict[str, Any]) -> None:
        self._queue.put(protocol.encode_frame(frame))

    def send_now(self, frame: dict[str, Any]) -> None:
        """Write ``frame`` from this thread (never the main thread: see the class)."""
        self._write(protocol.encode_frame(frame))

    def close(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        _block_sigint()
        while True:
            data = self._queue.get()
            if data is None:
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self.diag(f"wflo-agent: the channel to the host broke ({exc}); exiting")
            if self.on_lost is not None:
                self.on_lost()
            os._exit(EXIT_CHANNEL_LOST)


class OutputBudget:
    """Per-cell output cap: text and display data count against it; past it, one notice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cap = DEFAULT_OUTPUT_CAP
        self.used = 0
        self.exceeded = False

    def reset(self, cap: int) -> None:
        with self._lock:
            self.cap = max(0, cap)
            self.used = 0
            self.exceeded = False

    def admit_text(self, text: str) -> tuple[str, bool]:
        """(the part of ``text`` that fits, whether the cap was reached just now)."""
        with self._lock:
            if self.exceeded:
                return "", False
            raw = text.encode("utf-8", "surrogatepass")
            if self.used + len(raw) <= self.cap:
                self.used += len(raw)
                return text, False
            room = self.cap - self.used
            self.used = self.cap
            self.exceeded = True
            return raw[:room].decode("utf-8", "ignore"), True

    def admit_size(self, size: int) -> tuple[bool, bool]:
        """(whether an item of ``size`` bytes fits, whether the cap was reached just now)."""
        with self._lock:
            if self.exceeded:
                return False, False
            if self.used + size <= self.cap:
                self.used += size
                return True, False
            self.used = self.cap
            self.exceeded = True
            return False, True

    def notice(self) -> str:
        return (
            f"\n[wflo: output cap of {format_bytes(self.cap)} reached; "
            "the rest of this cell's output was dropped]\n"
        )


class OutputCapture:
    """fds 1 and 2 become pipes; a thread reads them and sends ``stream`` frames live.

    The agent keeps a private copy of each pipe's write end, so a cell that closes fd 1
    can be repaired before the next cell (``ensure_stdio``) and the reader never sees EOF.
    ``sync()`` returns once everything written to fds 1/2 before the call was sent.
    """

    def __init__(
        self,
        sender: Sender,
        budget: OutputBudget,
        current_id: Callable[[], str | None],
    ) -> None:
        self._sender = sender
        self._budget = budget
        self._current_id = current_id
        self._names: dict[int, str] = {}
        self._write_ends: dict[str, int] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._pending: dict[str, str] = {"stdout": "", "stderr": ""}
        self._pending_since: float | None = None
        for target, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            read_end = _high_fd(read_end)
            os.set_blocking(read_end, False)
            os.dup2(write_end, target, inheritable=True)
            self._write_ends[name] = _high_fd(write_end)
            self._names[read_end] = name
            self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        ctl_read, ctl_write = os.pipe()
        self._ctl_read = _high_fd(ctl_read)
        self._ctl_write = _high_fd(ctl_write)
        os.set_blocking(self._ctl_read, False)
        self._cond = threading.Condition()
        self._sync_requested = 0
        self._sync_done = 0
        self._thread = _agent_thread("wflo-agent-capture", self._run)

    def ensure_stdio(self) -> None:
        """Point fds 1/2 back at the capture pipes if a cell closed or redirected them."""
        for target, name in ((1, "stdout"), (2, "stderr")):
            mine = os.fstat(self._write_ends[name])
            try:
                now = os.fstat(target)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                same = False
            if not same:
                os.dup2(self._write_ends[name], target, inheritable=True)

    def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        with self._cond:
            self._sync_requested += 1
            target = self._sync_requested
            os.write(self._ctl_write, b"s")
            self._cond.wait_for(lambda: self._sync_done >= target, timeout_s)

    # reader thread -------------------------------------------------------------------

    def _run(self) -> None:
        _block_sigint()
        poller = select.poll()
        for fd in (*self._names, self._ctl_read):
            poller.register(fd, select.POLLIN)
        while True:
            timeout_ms: float | None = None
            if self._pending_since is not None:
                left = self._pending_since + FLUSH_INTERVAL_S - time.monotonic()
                timeout_ms = max(0.0, left * 1000)
            events = poller.poll(timeout_ms)
            sync_target: int | None = None
            for fd, _event in events:
                if fd == self._ctl_read:
                    with self._cond:
                        sync_target = self._sync_requested
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._ctl_read, 4096)
                elif fd in self._names and not self._read(fd):
                    poller.unregister(fd)
            if sync_target is not None:
                for fd in self._names:
                    while self._read(fd):
                        pass
                self._flush_all()
                with self._cond:
                    self._sync_done = max(self._sync_done, sync_target)
                    self._cond.notify_all()
            elif (
                self._pending_since is not None
                and time.monotonic() >= self._pending_since + FLUSH_INTERVAL_S
            ):
                self._flush_all()

    def _read(self, fd: int) -> bool:
        """Read what is there on ``fd``; False when nothing was (or it hit EOF)."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            return False
        if not data:
            return False
        name = self._names[fd]
        text = self._decoders[name].decode(data)
        if text:
            self._pending[name] += text
            buffered = self._pending[name]
            cut = buffered.rfind("\n") + 1
            if len(buffered) >= STREAM_CHUNK_CHARS:
                cut = len(buffered)
            if cut:
                self._pending[name] = buffered[cut:]
                self._emit(name, buffered[:cut])
            if any(self._pending.values()):
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
            else:
                self._pending_since = None
        return True

    def _flush_all(self) -> None:
        for name, text in self._pending.items():
            if text:
                self._pending[name] = ""
                self._emit(name, text)
        self._pending_since = None

    def _emit(self, name: str, text: str) -> None:
        cell_id = self._current_id()
        if cell_id is None:  # output between cells (a daemon process): nobody to show it to
            return
        text, reached = self._budget.admit_text(text)
        for start in range(0, len(text), STREAM_CHUNK_CHARS):
            chunk = text[start : start + STREAM_CHUNK_CHARS]
            self._sender.send({"type": "stream", "id": cell_id, "name": name, "text": chunk})
        if reached:
            self._sender.send(
                {"type": "stream", "id": cell_id, "name": "stderr", "text": self._budget.notice()}
            )


# ---------------------------------------------------------------------------------------
# rich display


def _is_class(obj: Any) -> bool:
    return isinstance(obj, type)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _normalise_mime(mime: str, value: Any) -> Any:
    """A value for ``data[mime]`` in a Jupyter bundle, or None to drop it."""
    if value is None:
        return None
    if mime in _BINARY_MIMES:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return protocol.b64encode(bytes(value))
        return value if isinstance(value, str) else None
    if mime == "application/json" or mime.endswith("+json"):
        return value if _jsonable(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _figure_png(obj: Any) -> bytes | None:
    figure_module = sys.modules.get("matplotlib.figure")
    if figure_module is None or not isinstance(obj, figure_module.Figure):
        return None
    buffer = io.BytesIO()
    obj.canvas.print_figure(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def mimebundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``obj`` the way IPython's display formatters build it."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if not _is_class(obj):
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                produced = method(include=None, exclude=None)
            except Exception:
                produced = None
            extra_md: Any = None
            if isinstance(produced, tuple) and len(produced) == 2:
                produced, extra_md = produced
            if isinstance(produced, dict):
                for mime, value in produced.items():
                    normal = _normalise_mime(str(mime), value)
                    if normal is not None:
                        data[str(mime)] = normal
            if isinstance(extra_md, dict) and _jsonable(extra_md):
                metadata.update({str(k): v for k, v in extra_md.items()})
        for mime, attr in _REPR_METHODS:
            if mime in data:
                continue
            method = getattr(obj, attr, None)
            if not callable(method):
                continue
            try:
                value = method()
            except Exception:
                continue
            if isinstance(value, tuple) and len(value) == 2:
                value, md = value
                if isinstance(md, dict) and _jsonable(md):
                    metadata[mime] = md
            normal = _normalise_mime(mime, value)
            if normal is not None:
                data[mime] = normal
        if "image/png" not in data:
            try:
                png = _figure_png(obj)
            except Exception:
                png = None
            if png is not None:
                data["image/png"] = protocol.b64encode(png)
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as exc:
            data["text/plain"] = f"<{type_name(obj)} object (repr failed: {_one_line(exc)})>"
    return data, metadata


# ---------------------------------------------------------------------------------------
# --out values: safe formats only


def _json_problem(value: Any) -> tuple[str, bool] | None:
    """None if ``value`` is JSON (str/int/float/bool/None, lists and str-keyed dicts of
    those); else (what is not, whether that is ``value`` itself)."""
    stack: list[Any] = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (str, bool, int, float)):
            continue
        if isinstance(item, (list, dict)):
            if id(item) in seen:
                return f"self-referencing {type_name(item)}", item is value
            seen.add(id(item))
            if isinstance(item, list):
                stack.extend(item)
                continue
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"dict with a key of type {type_name(key)}", item is value
                stack.append(inner)
            continue
        return type_name(item), item is value
    return None


def _refusal(name: str, what: str, value: Any) -> dict[str, Any]:
    return {
        "error": (
            f"cannot return {name}: {what} is not JSON, a DataFrame/Series, a numpy array or bytes"
        ),
        "type": type_name(value),
    }


def _encode_arrow(name: str, value: Any, pandas: Any) -> dict[str, Any]:
    tname = type_name(value)
    try:
        pyarrow = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.ipc")
    except ImportError:
        return {"error": f"cannot return {name}: pyarrow is not installed in the sandbox image"}
    is_series = isinstance(value, pandas.Series)
    series_name = None
    frame = value
    if is_series:
        series_name = value.name if _jsonable(value.name) else str(value.name)
        frame = value.to_frame(name="values")
    try:
        table = pyarrow.Table.from_pandas(frame, preserve_index=True)
        sink = pyarrow.BufferOutputStream()
        with pyarrow.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        raw = sink.getvalue().to_pybytes()
    except Exception as exc:
        return {
            "error": f"cannot return {name}: {tname} cannot be converted to Arrow "
            f"({_one_line(exc)})",
            "type": tname,
        }
    encoded: dict[str, Any] = {
        "format": "arrow",
        "kind": "series" if is_series else "dataframe",
        "type": tname,
        "data": protocol.b64encode(raw),
    }
    if is_series:
        encoded["series_name"] = series_name
    return encoded


def _encode_npy(name: str, value: Any, numpy: Any) -> dict[str, Any]:
    tname = type_name(value)
    is_scalar = not isinstance(value, numpy.ndarray)
    array = numpy.asarray(value)
    buffer = io.BytesIO()
    try:
        numpy.save(buffer, array, allow_pickle=False)
    except (ValueError, TypeError) as exc:
        return {
            "error": f"cannot return {name}: a numpy array of dtype {array.dtype} cannot be "
            f"sent without pickle ({_one_line(exc)})",
            "type": tname,
        }
    return {
        "format": "npy",
        "kind": "scalar" if is_scalar else "array",
        "type": tname,
        "data": protocol.b64encode(buffer.getvalue()),
    }


def encode_value(name: str, value: Any) -> dict[str, Any]:
    """One ``--out`` value -> ``{format, type, data, ...}`` or ``{error, type}``."""
    tname = type_name(value)
    if isinstance(value, (bytes, bytearray)):
        return {"format": "bytes", "type": tname, "data": protocol.b64encode(bytes(value))}
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, (pandas.DataFrame, pandas.Series)):
        return _encode_arrow(name, value, pandas)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _encode_npy(name, value, numpy)
    problem = _json_problem(value)
    if problem is not None:
        what, itself = problem
        return _refusal(name, what if itself else f"{tname} holding a {what}", value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"error": f"cannot return {name}: {_one_line(exc)}", "type": tname}
    return {"format": "json", "type": tname, "data": text}


def encode_outputs(names: Sequence[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Every requested ``--out`` name, encoded (errors per name, never an exception)."""
    outputs: dict[str, Any] = {}
    total = 0
    for name in names:
        if name not in namespace:
            outputs[name] = {"error": f"cannot return {name}: name {name!r} is not defined"}
            continue
        try:
            encoded = encode_value(name, namespace[name])
        except Exception as exc:
            encoded = {
                "error": f"cannot return {name}: {_one_line(exc)}",
                "type": type_name(namespace[name]),
            }
        size = len(encoded.get("data") or "")
        if total + size > OUTPUT_LIMIT_BYTES:
            encoded = {
                "error": f"cannot return {name}: its encoded size ({format_bytes(size)}) is over "
                f"the channel limit of {format_bytes(OUTPUT_LIMIT_BYTES)} per cell",
                "type": encoded.get("type", type_name(namespace[name])),
            }
            size = 0
        total += size
        outputs[name] = encoded
    return outputs


# ---------------------------------------------------------------------------------------
# matplotlib: Agg backend, figures shown inline


class _PyplotHook:
    """A ``sys.meta_path`` finder that patches ``matplotlib.pyplot.show`` right after pyplot
    is imported (duck-typed: ``importlib.abc`` costs 25 ms of agent start-up)."""

    def __init__(self, on_import: Callable[[types.ModuleType], None]) -> None:
        self._on_import = on_import

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module
        on_import = self._on_import

        def exec_module(module: types.ModuleType) -> None:
            original(module)
            with contextlib.suppress(Exception):
                on_import(module)

        setattr(loader, "exec_module", exec_module)  # noqa: B010 - patch one loader instance
        return spec


# ---------------------------------------------------------------------------------------
# the kernel: persistent namespace, cells, interrupts


def _sigint_outside_cell(signum: int, frame: types.FrameType | None) -> None:
    """SIGINT while the agent itself (not a cell) runs: ignored."""


class Kernel:
    """Runs cells in one persistent ``__main__`` namespace (main thread only)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.budget = OutputBudget()
        self.execution_count = 0
        self.current_id: str | None = None
        self._requested_interrupt: str | None = None
        self._main_ident = threading.get_ident()
        self.module = types.ModuleType("__main__")
        self.namespace: dict[str, Any] = self.module.__dict__
        self.namespace["__builtins__"] = builtins
        self.capture: OutputCapture | None = None
        self.channel_check: Callable[[], bool] | None = None
        self.stdout: io.TextIOWrapper | None = None
        self.stderr: io.TextIOWrapper | None = None

    # setup ---------------------------------------------------------------------------

    def install(self) -> None:
        """Capture fds 1/2, replace ``sys.std*``, ``__main__``, ``display`` and pyplot."""
        self.capture = OutputCapture(self.sender, self.budget, lambda: self.current_id)
        self.stdout = self._text_stream(1)
        self.stderr = self._text_stream(2)
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
        for name in ("stdout", "stderr", "stdin"):  # libraries that use sys.__stdout__
            setattr(sys, f"__{name}__", getattr(sys, name))
        sys.modules["__main__"] = self.module
        sys.argv = [""]
        builtins.display = self.display_builtin  # type: ignore[attr-defined]
        builtins.input = _no_input
        os.environ.setdefault("MPLBACKEND", "Agg")
        sys.meta_path.insert(0, _PyplotHook(self._patch_pyplot))
        sys.path.insert(0, "")  # like a REPL: modules in the working directory import
        signal.signal(signal.SIGINT, _sigint_outside_cell)
        _agent_thread("wflo-agent-flush", self._flush_loop)

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
        _block_sigint()
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            if self.channel_check is not None and not self.channel_check():
                self.sender.diag("wflo-agent: a cell closed the channel; exiting")
                os._exit(EXIT_CHANNEL_LOST)
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
            signal.signal(signal.SIGINT, _sigint_outside_cell)

    # display -------------------------------------------------------------------------

    def display_builtin(
        self,
        *objs: Any,
        metadata: dict[str, Any] | None = None,
        raw: bool = False,
        **_ignored: Any,
    ) -> None:
        """``display(obj, ...)``: show objects in the cell's output, like IPython."""
        for obj in objs:
            if raw and isinstance(obj, dict):
                data = {str(k): v for k, v in obj.items() if _normalise_mime(str(k), v) is not None}
                self.publish(data, dict(metadata or {}))
            else:
                data, md = mimebundle(obj)
                if metadata:
                    md.update(metadata)
                self.publish(data, md)

    def publish(
        self, data: dict[str, Any], metadata: dict[str, Any], kind: str = "display_data"
    ) -> None:
        cell_id = self.current_id
        if cell_id is None:
            return
        self._sync_output()  # text printed before the display arrives before it
        frame = {
            "type": "display",
            "id": cell_id,
            "data": data,
            "metadata": metadata if _jsonable(metadata) else {},
            "kind": kind,
        }
        try:
            encoded_size = len(json.dumps(frame["data"]))
        except (TypeError, ValueError):
            return
        fits, reached = self.budget.admit_size(encoded_size)
        if fits:
            self.sender.send(frame)
        if reached:
            self.sender.send(
                {"type": "stream", "id": cell_id, "name": "stderr", "text": self.budget.notice()}
            )

    def _patch_pyplot(self, pyplot: types.ModuleType) -> None:
        def show(*args: Any, **kwargs: Any) -> None:
            self.flush_figures()

        pyplot.show = show  # type: ignore[attr-defined]

    def flush_figures(self) -> None:
        """Send every open matplotlib figure as a PNG, then close them all."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self.current_id is None:
            return
        try:
            for number in list(pyplot.get_fignums()):
                figure = pyplot.figure(number)
                data, md = mimebundle(figure)
                self.publish(data, md)
        finally:
            pyplot.close("all")

    # cells ---------------------------------------------------------------------------

    def run(self, frame: dict[str, Any]) -> None:
        """One ``exec`` frame -> stream/display frames -> one ``result`` frame."""
        cell_id = str(frame.get("id"))
        self.execution_count += 1
        count = self.execution_count
        cap = frame.get("output_cap")
        self.budget.reset(cap if isinstance(cap, int) else DEFAULT_OUTPUT_CAP)
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
                    self.flush_figures()
                except Exception as exc:
                    error = error or _error_dict(exc)
            finally:
                self._sync_output()
            if error is None:
                names = frame.get("outputs") or []
                outputs = encode_outputs([str(n) for n in names], self.namespace)
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
                    "evalue": f"cannot load input {name}: {_one_line(exc)}",
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
            body = compile(tree, filename, "exec")
            tail = compile(expression, filename, "eval") if expression is not None else None
        except (SyntaxError, ValueError, OverflowError) as exc:
            return _error_dict(exc, skip_agent_frames=True)
        try:
            with self._user_signals(cell_id):
                exec(body, self.namespace)
                value = eval(tail, self.namespace) if tail is not None else None
        except SystemExit as exc:
            if exc.code in (None, 0):
                return None
            return _error_dict(exc, skip_agent_frames=True)
        except BaseException as exc:
            return _error_dict(exc, skip_agent_frames=True)
        if value is not None:
            self.namespace["_"] = value
            try:
                data, md = mimebundle(value)
                self.publish(data, md, kind="execute_result")
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
        here = os.path.abspath(__file__)
        while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == here:
            tb = tb.tb_next
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


# ---------------------------------------------------------------------------------------
# LLM calls: a loopback HTTP proxy, one ``llm_request`` frame per call


LLM_TOKEN_PREFIX = "wflo-sandbox-"
LLM_MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body the proxy accepts (413 above it)."""
LLM_CLIENT_CHECK_S = 0.5
"""While it waits for the host, a proxy thread checks this often whether its client left."""
LLM_DRAIN_S = 0.5
"""When the channel dies, how long waiting requests get to answer 502 before the agent exits."""
LLM_DIRECT_MAX_B64 = 256 * 1024
"""Complete answers up to this size (base64) are written by the channel's reading thread."""


class LlmRouter:
    """Answer frames of in-flight LLM calls, one queue per request id: the channel's reading
    thread ``deliver``s, the proxy thread serving the request reads its queue. A request
    may also register a ``direct`` writer: a complete (non-streamed) answer is then written
    to its client by the reading thread itself, one loopback send, and the proxy thread
    only learns that it was (``{"type": "_written"}``): one thread hand-off less on every
    call's path. Frames for an id nobody waits for (cancelled, timed out) are dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}
        self._direct: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self.lost: str | None = None

    def open(
        self, request_id: str, direct: Callable[[dict[str, Any]], bool] | None = None
    ) -> queue.SimpleQueue[dict[str, Any]] | None:
        """A queue for ``request_id``'s answer, or None when the channel is gone."""
        with self._cond:
            if self.lost is not None:
                return None
            inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
            self._pending[request_id] = inbox
            if direct is not None:
                self._direct[request_id] = direct
            return inbox

    def forget(self, request_id: str) -> None:
        with self._cond:
            self._pending.pop(request_id, None)
            self._direct.pop(request_id, None)
            self._cond.notify_all()

    def deliver(self, frame: dict[str, Any]) -> bool:
        request_id = str(frame.get("id"))
        with self._cond:
            inbox = self._pending.get(request_id)
            direct = self._direct.get(request_id)
        if inbox is None:
            return False
        if direct is not None and frame.get("type") == "llm_response" and direct(frame):
            inbox.put({"type": "_written"})
            return True
        inbox.put(frame)
        return True

    def channel_lost(self, reason: str, drain_s: float = LLM_DRAIN_S) -> None:
        """Every waiting request is answered 502 (``reason``); wait up to ``drain_s`` for
        the proxy threads to write those answers."""
        with self._cond:
            self.lost = reason
            for inbox in self._pending.values():
                inbox.put({"type": "_lost", "error": reason})
            self._cond.wait_for(lambda: not self._pending, drain_s)


def _client_gone(sock: socket.socket) -> bool:
    """Has the HTTP client closed its connection? (It sends nothing while it waits.)"""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _header_items(headers: Any) -> list[tuple[str, str]]:
    """The host's response headers that may go to the client (no framing, no CR/LF)."""
    if not isinstance(headers, dict):
        return []
    items: list[tuple[str, str]] = []
    for name, value in headers.items():
        key = str(name).strip().lower()
        if not key or key in protocol.LLM_HOP_HEADERS or any(c in key for c in " :\r\n"):
            continue
        items.append((key, " ".join(str(value).split())))
    return items


LLM_MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus header block the proxy reads (414 / 431 above it)."""
LLM_MAX_HEADER_LINES = 100
LLM_LINGER_S = 1.0
"""After its last answer on a connection, how long the proxy keeps reading (and dropping)
what the client still sends: unread input would turn the close into a TCP reset that can
destroy the answer in flight (a refused body, an oversized header block)."""

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""Characters of an RFC 9110 token (methods, header names)."""
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
"""Reason phrases of the usual statuses (others go out with an empty one; clients ignore it)."""


def _provider_guess(path: str) -> str:
    """Whose error shape to answer in when the path matches no route."""
    return "anthropic" if "/messages" in path else "openai"


def _has_control(value: str) -> bool:
    """Does a header value hold a control character (HTAB is allowed)?"""
    return not value.isprintable() and any((c < " " and c != "\t") or c == "\x7f" for c in value)


class _BadRequest(Exception):
    """A request head the proxy will not read: answered with ``status``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Headers:
    """A request's header fields by case-insensitive name; a repeated field's values are
    joined with ``", "`` (RFC 9110 5.3)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lower-case names

    def get(self, name: str) -> str | None:
        return self._fields.get(name.lower())


class _Exchange:
    """One request on a proxy connection and the answer to it: a strict HTTP/1.1 reader
    of the request head plus the slice of ``http.server.BaseHTTPRequestHandler`` that
    ``LlmProxy`` uses (``path``, ``headers.get``, ``send_response``/``send_header``/
    ``end_headers``, ``close_connection``, ...). Everything written is buffered and leaves in
    ONE ``sendall`` at ``flush()``; a stream flushes its head, then each chunk."""

    def __init__(self, connection: socket.socket, rfile: io.BufferedReader) -> None:
        self.connection = connection
        self.rfile = rfile
        self.command = ""
        self.path = ""
        self.request_version = "HTTP/1.1"
        self.headers = _Headers({})
        self.close_connection = True
        self._head: list[str] = []
        self._connection_header = False
        self._out: list[bytes] = []

    # the request ---------------------------------------------------------------------

    def read_head(self) -> bool:
        """Read the request line and the header fields: False when the client closed the
        connection (between requests or in the middle of a head); ``_BadRequest`` when the
        head is malformed or over the limits."""
        budget = LLM_MAX_HEAD_BYTES
        line = self.rfile.readline(budget + 1)
        while line in (b"\r\n", b"\n"):  # blank lines before a request: ignored (RFC 9112)
            budget -= len(line)
            line = self.rfile.readline(budget + 1)
        if len(line) > budget:
            raise _BadRequest(414, f"the request line is over {format_bytes(LLM_MAX_HEAD_BYTES)}")
        if not line.endswith(b"\n"):
            return False
        budget -= len(line)
        text = line.rstrip(b"\r\n").decode("latin-1")
        parts = text.split(" ")
        if len(parts) > 1:
            self.path = parts[1]
        if (
            len(parts) != 3
            or not parts[0]
            or not _TCHARS.issuperset(parts[0])
            or not parts[1]
            or not (parts[1].isascii() and parts[1].isprintable())
            or not (
                len(parts[2]) == 8 and parts[2][:7] == "HTTP/1." and parts[2][7] in "0123456789"
            )
        ):
            raise _BadRequest(400, f"malformed HTTP/1.1 request line {text[:200]!r}")
        self.command, self.path, self.request_version = parts
        fields: dict[str, str] = {}
        lines = 0
        while True:
            line = self.rfile.readline(budget + 1)
            if len(line) > budget:
                raise _BadRequest(
                    431, f"the request's header block is over {format_bytes(LLM_MAX_HEAD_BYTES)}"
                )
            if not line.endswith(b"\n"):
                return False
            budget -= len(line)
            if line in (b"\r\n", b"\n"):
                break
            lines += 1
            if lines > LLM_MAX_HEADER_LINES:
                raise _BadRequest(431, f"more than {LLM_MAX_HEADER_LINES} header fields")
            name, colon, value = line.decode("latin-1").partition(":")
            value = value.strip(" \t\r\n")
            if not colon or not name or not _TCHARS.issuperset(name) or _has_control(value):
                raise _BadRequest(400, f"malformed header line {line[:200]!r}")
            key = name.lower()
            seen = fields.get(key)
            if seen is None:
                fields[key] = value
            elif key == "content-length":
                if value != seen:
                    raise _BadRequest(400, "conflicting Content-Length headers")
            else:
                fields[key] = f"{seen}, {value}"
        self.headers = _Headers(fields)
        options = {o.strip().lower() for o in fields.get("connection", "").split(",")}
        if self.request_version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in options
        else:
            self.close_connection = "close" in options
        return True

    def read_body(self, length: int) -> bytes:
        """``length`` bytes of body (fewer if the client closed); says ``100 Continue``
        first when the client waits for it."""
        expect = str(self.headers.get("expect") or "").lower()
        if expect == "100-continue" and self.request_version != "HTTP/1.0":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        return self.rfile.read(length)

    # the answer ----------------------------------------------------------------------

    def send_response(self, status: int) -> None:
        self._head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        self._head.append("Server: wflo-sandbox-llm-proxy")
        self._connection_header = False

    def send_header(self, name: str, value: str) -> None:
        if name.lower() == "connection":
            self._connection_header = True
            if value.lower() == "close":
                self.close_connection = True
        self._head.append(f"{name}: {value}")

    def end_headers(self) -> None:
        if not self._connection_header:
            if self.close_connection:
                self._head.append("Connection: close")
            elif self.request_version == "HTTP/1.0":
                self._head.append("Connection: keep-alive")
        self._head.append("\r\n")
        self._out.append("\r\n".join(self._head).encode("latin-1", "replace"))
        self._head = []

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        """Everything written since the last flush, in one ``sendall``."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.connection.sendall(data)


def _linger(connection: socket.socket) -> None:
    """The server's half-close: FIN after the last answer, then the client's remaining
    input is read and dropped until it closes too (at most ``LLM_LINGER_S``)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LLM_LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(1 << 16):
                return


class LlmProxy:
    """The loopback HTTP proxy the SDKs in cells talk to.

    The listening socket is bound in ``__init__`` (so the port is known before ``ready``);
    the serving thread accepts connections and gives each its own daemon thread (SIGINT
    blocked, inherited). The HTTP/1.1 server is our own, small and strict (``_Exchange``:
    ``http.server`` costs tens of milliseconds to import and ~0.1 ms per request): requests
    of a connection are served in order (keep-alive, pipelining; ``Connection: close`` and
    HTTP/1.0 close after the answer), a head over ``LLM_MAX_HEAD_BYTES`` is a 431 and a
    malformed one a 400, both in the provider's error shape. An answer leaves in one write;
    a streamed answer goes out with chunked transfer encoding, each ``llm_response_chunk``
    written as it arrives.
    """

    def __init__(
        self,
        sender: Sender,
        router: LlmRouter,
        current_cell: Callable[[], str | None],
        timeout_s: float = protocol.LLM_IDLE_TIMEOUT_S,
    ) -> None:
        self.sender = sender
        self.router = router
        self.current_cell = current_cell
        self.timeout_s = timeout_s
        self.token = LLM_TOKEN_PREFIX + os.urandom(16).hex()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.bind(("127.0.0.1", 0))
            raw.listen(128)
            fd = _high_fd(raw.detach())
        except BaseException:
            raw.close()
            raise
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=fd)
        self.port: int = self.listener.getsockname()[1]

    def environment(self) -> dict[str, str]:
        """What the SDKs need: base URLs of this proxy and the session token as keys."""
        base = f"http://127.0.0.1:{self.port}"
        return {
            "OPENAI_BASE_URL": f"{base}/v1",
            "ANTHROPIC_BASE_URL": base,
            "OPENAI_API_KEY": self.token,
            "ANTHROPIC_API_KEY": self.token,
        }

    def start(self) -> None:
        _agent_thread("wflo-agent-llm-proxy", self._serve)

    def _serve(self) -> None:
        """Accept connections for good, one daemon thread each."""
        _block_sigint()  # inherited by every connection thread
        import hmac  # noqa: F401 - loaded now, used by every request's token check

        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                    diag(f"wflo-agent: the LLM proxy's socket is gone ({exc}); no more calls")
                    return
                time.sleep(0.05)  # EMFILE and the like: the backlog waits meanwhile
                continue
            try:
                threading.Thread(
                    target=self._connection,
                    args=(connection,),
                    name="wflo-agent-llm-connection",
                    daemon=True,
                ).start()
            except RuntimeError as exc:  # no more threads: this client is turned away
                diag(f"wflo-agent: LLM proxy connection dropped ({exc})")
                connection.close()

    def _connection(self, connection: socket.socket) -> None:
        """One client connection (its own thread): requests answered in order until the
        client closes or an answer closes the connection."""
        try:
            with connection, connection.makefile("rb") as rfile:
                # a client's delayed ACK must never hold back a write (~40 ms on Linux)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    client = _Exchange(connection, rfile)
                    try:
                        if not client.read_head():
                            return  # the client closed the connection
                    except _BadRequest as bad:
                        self.refuse(client, _provider_guess(client.path), bad.status, bad.message)
                    else:
                        if client.command == "POST":
                            self.handle(client)
                        else:
                            self.refuse(
                                client,
                                _provider_guess(client.path),
                                405,
                                f"{client.command} is not supported; LLM calls are POST",
                            )
                    client.flush()
                    if client.close_connection:
                        _linger(connection)
                        return
        except OSError:
            pass  # the client went away
        except Exception:
            diag(f"wflo-agent: LLM proxy request failed\n{traceback.format_exc()}")

    # one HTTP request ----------------------------------------------------------------

    def handle(self, client: _Exchange) -> None:
        """``POST`` from an SDK -> ``llm_request`` -> the host's answer, written back."""
        route = protocol.llm_route(client.path)
        if route is None:
            served = ", ".join(protocol.LLM_ROUTES)
            self.refuse(
                client,
                _provider_guess(client.path),
                404,
                f"{client.path} is not served by the wflo sandbox (only {served})",
            )
            return
        provider, endpoint, path = route
        if not self._authorised(client):
            self.refuse(
                client,
                provider,
                401,
                "invalid API key: inside a wflo sandbox, LLM calls use the session token "
                "already set in OPENAI_API_KEY / ANTHROPIC_API_KEY",
            )
            return
        body = self._read_json(client, provider)
        if body is None:
            return
        request_id = os.urandom(12).hex()
        claim = threading.Lock()  # who writes the answer: the reading thread or this one

        def direct(frame: dict[str, Any]) -> bool:
            """On the reading thread: write a small complete answer at once."""
            if len(str(frame.get("body_b64") or "")) > LLM_DIRECT_MAX_B64:
                return False
            if not claim.acquire(blocking=False):
                return False  # this thread already answered (a timeout, the client left)
            self._write_full(client, provider, frame)
            return True

        inbox = self.router.open(request_id, direct)
        if inbox is None:
            self.refuse(client, provider, 502, "the sandbox has lost its channel to the host")
            return
        try:
            headers = {}
            for name in protocol.LLM_FORWARDED_HEADERS:
                value = client.headers.get(name)
                if value is not None:
                    headers[name] = str(value)
            try:
                self.sender.send_now(
                    {
                        "type": "llm_request",
                        "id": request_id,
                        "cell": self.current_cell(),
                        "provider": provider,
                        "endpoint": endpoint,
                        "path": path,
                        "headers": headers,
                        "body": body,
                    }
                )
            except protocol.ProtocolError as exc:
                self.refuse(client, provider, 413, f"the request cannot be sent to the host: {exc}")
                return
            self._answer(client, provider, request_id, inbox, claim)
        finally:
            self.router.forget(request_id)

    def refuse(self, client: _Exchange, provider: str, status: int, message: str) -> None:
        """An error of the proxy itself, in ``provider``'s shape; the connection is closed
        after it (the request body may be unread) and the SDK is told not to retry. Sent at
        once: ``handle`` forgets the request only after its answer left (a dying channel
        waits for that before the agent exits)."""
        data = json.dumps(protocol.llm_error_body(provider, status, message)).encode()
        client.close_connection = True
        client.send_response(status)
        client.send_header("Content-Type", "application/json")
        client.send_header("Content-Length", str(len(data)))
        client.send_header("Connection", "close")
        client.send_header("x-should-retry", "false")
        client.end_headers()
        client.write(data)
        with contextlib.suppress(OSError):
            client.flush()

    def _authorised(self, client: _Exchange) -> bool:
        import hmac  # already loaded by the serving thread; a dict lookup here

        presented: list[str] = []
        authorization = str(client.headers.get("authorization") or "")
        if authorization[:7].lower() == "bearer ":
            presented.append(authorization[7:].strip())
        api_key = client.headers.get("x-api-key")
        if api_key is not None:
            presented.append(str(api_key).strip())
        expected = self.token.encode()
        return any(hmac.compare_digest(p.encode("utf-8", "replace"), expected) for p in presented)

    def _read_json(self, client: _Exchange, provider: str) -> dict[str, Any] | None:
        """The request's JSON object, or None after refusing the request."""
        if "chunked" in str(client.headers.get("transfer-encoding") or "").lower():
            self.refuse(client, provider, 411, "send the request body with a Content-Length")
            return None
        declared = str(client.headers.get("content-length") or "0")
        length = int(declared) if declared.isascii() and declared.isdigit() else -1
        if length < 0:
            self.refuse(client, provider, 400, "invalid Content-Length")
            return None
        if length > LLM_MAX_BODY_BYTES:
            self.refuse(
                client,
                provider,
                413,
                f"request body of {format_bytes(length)} is over the sandbox proxy's limit "
                f"of {format_bytes(LLM_MAX_BODY_BYTES)}",
            )
            return None
        try:
            raw = client.read_body(length) if length else b""
        except OSError:
            client.close_connection = True
            return None
        if len(raw) < length:
            client.close_connection = True
            return None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.refuse(client, provider, 400, f"the request body is not JSON: {_one_line(exc)}")
            return None
        if not isinstance(body, dict):
            self.refuse(
                client,
                provider,
                400,
                f"the request body is a JSON {type(body).__name__}, not an object",
            )
            return None
        return body

    # the host's answer ---------------------------------------------------------------

    def _next(
        self,
        client: _Exchange,
        request_id: str,
        inbox: queue.SimpleQueue[dict[str, Any]],
    ) -> dict[str, Any] | None:
        """The next answer frame, ``{"type": "_timeout"}`` after ``timeout_s`` of silence, or
        None if the client went away meanwhile (the host is told with ``llm_cancel``)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._cancel(request_id, f"no answer from the host within {self.timeout_s:g} s")
                return {"type": "_timeout"}
            try:
                return inbox.get(timeout=min(left, LLM_CLIENT_CHECK_S))
            except queue.Empty:
                pass
            if _client_gone(client.connection):
                self._cancel(request_id, "the client closed the connection")
                client.close_connection = True
                return None

    def _cancel(self, request_id: str, reason: str) -> None:
        self.router.forget(request_id)
        if self.router.lost is None:
            self.sender.send({"type": "llm_cancel", "id": request_id, "reason": reason})

    def _answer(
        self,
        client: _Exchange,
        provider: str,
        request_id: str,
        inbox: queue.SimpleQueue[dict[str, Any]],
        claim: threading.Lock,
    ) -> None:
        frame = self._next(client, request_id, inbox)
        if frame is not None and frame["type"] == "_written":
            return  # the reading thread wrote the answer
        if not claim.acquire(blocking=False):
            # the reading thread is writing the answer right now: let it finish first
            with contextlib.suppress(queue.Empty):
                while inbox.get(timeout=LLM_DRAIN_S)["type"] != "_written":
                    pass
            return
        if frame is None:
            return
        kind = frame["type"]
        if kind == "_timeout":
            self.refuse(
                client, provider, 504, f"the wflo host sent no answer within {self.timeout_s:g} s"
            )
            return
        if kind == "_lost":
            self.refuse(client, provider, 502, f"the wflo host is gone: {frame.get('error')}")
            return
        if kind == "llm_response":
            self._write_full(client, provider, frame)
            return
        if kind != "llm_response_start":
            self.refuse(client, provider, 502, f"the wflo host answered with {kind} first")
            return
        status = frame.get("status")
        if not isinstance(status, int) or not 100 <= status <= 599:
            self.refuse(client, provider, 502, f"the wflo host sent an invalid status {status!r}")
            return
        self._stream(
            client, provider, request_id, inbox, status, _header_items(frame.get("headers"))
        )

    def _write_full(self, client: _Exchange, provider: str, frame: dict[str, Any]) -> None:
        """A complete ``llm_response`` to the client: status, headers and body, one send."""
        status = frame.get("status")
        if not isinstance(status, int) or not 100 <= status <= 599:
            self.refuse(client, provider, 502, f"the wflo host sent an invalid status {status!r}")
            return
        headers = _header_items(frame.get("headers"))
        try:
            body = protocol.b64decode(frame.get("body_b64") or "")
        except protocol.ProtocolError as exc:
            self.refuse(client, provider, 502, f"the wflo host sent an invalid body: {exc}")
            return
        if not any(name == "content-type" for name, _ in headers):
            headers.append(("content-type", "application/json"))
        try:
            client.send_response(status)
            for name, value in headers:
                client.send_header(name, value)
            client.send_header("Content-Length", str(len(body)))
            client.end_headers()
            client.write(body)
            client.flush()  # headers and body: one send
        except OSError:
            client.close_connection = True

    def _stream(
        self,
        client: _Exchange,
        provider: str,
        request_id: str,
        inbox: queue.SimpleQueue[dict[str, Any]],
        status: int,
        headers: list[tuple[str, str]],
    ) -> None:
        """Chunked transfer encoding: every ``llm_response_chunk`` goes out as it arrives,
        so the SDK's SSE parser sees each event at once."""
        if not any(name == "content-type" for name, _ in headers):
            headers.append(("content-type", "text/event-stream"))
        is_sse = any(n == "content-type" and "event-stream" in v for n, v in headers)
        try:
            client.send_response(status)
            for name, value in headers:
                client.send_header(name, value)
            client.send_header("Transfer-Encoding", "chunked")
            client.end_headers()
            client.flush()
        except OSError:
            self._cancel(request_id, "the client closed the connection")
            client.close_connection = True
            return
        while True:
            frame = self._next(client, request_id, inbox)
            if frame is None:
                return
            kind = frame["type"]
            error: str | None = None
            if kind == "llm_response_chunk":
                try:
                    data = protocol.b64decode(frame.get("data_b64") or "")
                except protocol.ProtocolError as exc:
                    error = f"the wflo host sent an invalid chunk: {exc}"
                    self._cancel(request_id, error)
                else:
                    if not data:
                        continue
                    try:
                        client.write(b"%x\r\n%b\r\n" % (len(data), data))
                        client.flush()
                    except OSError:
                        self._cancel(request_id, "the client closed the connection")
                        client.close_connection = True
                        return
                    continue
            elif kind == "llm_response_end":
                error = None if frame.get("error") is None else str(frame.get("error"))
            elif kind == "_timeout":
                error = f"the wflo host sent nothing for {self.timeout_s:g} s during the stream"
            elif kind == "_lost":
                error = f"the wflo host is gone: {frame.get('error')}"
            else:
                error = f"the wflo host sent {kind} inside a stream"
                self._cancel(request_id, error)
            tail = b""
            if error is not None:
                if not is_sse:  # nothing the client can parse: cut the body short
                    client.close_connection = True
                    return
                event = protocol.llm_sse_error(provider, error)
                tail = b"%x\r\n%b\r\n" % (len(event), event)
            try:
                client.write(tail + b"0\r\n\r\n")
                client.flush()
            except OSError:
                client.close_connection = True
            return


# ---------------------------------------------------------------------------------------
# entry point


class Agent:
    """Connects to the host, then serves frames until ``shutdown`` or the host goes away."""

    def __init__(
        self, socket_path: str, token: str, llm_timeout_s: float = protocol.LLM_IDLE_TIMEOUT_S
    ) -> None:
        global _diag_fd
        _diag_fd = _high_fd(os.dup(2))
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(socket_path)
        fd = _high_fd(raw.detach())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        self.token = token
        self.sender = Sender(self.sock, self.diag)
        self.kernel = Kernel(self.sender)
        identity = os.fstat(fd)
        self._channel_identity = (identity.st_dev, identity.st_ino)
        self._channel_fd = fd
        self.kernel.channel_check = self.channel_intact
        self.inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.router = LlmRouter()
        self.sender.on_lost = lambda: self.router.channel_lost("the channel to the host broke")
        self.proxy: LlmProxy | None = None
        try:
            self.proxy = LlmProxy(
                self.sender, self.router, lambda: self.kernel.current_id, llm_timeout_s
            )
        except OSError as exc:  # no loopback interface: cells run, LLM calls cannot
            self.diag(f"wflo-agent: no LLM proxy ({exc})")

    def channel_intact(self) -> bool:
        """Is the channel fd still open and still the socket the agent connected?"""
        try:
            info = os.fstat(self._channel_fd)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._channel_identity

    def diag(self, message: str) -> None:
        """A line for ``docker logs`` (the container's original stderr), never the cell."""
        diag(message)

    def serve(self) -> int:
        self.kernel.install()
        if self.proxy is not None:
            self.proxy.start()
            os.environ.update(self.proxy.environment())  # cells and subprocesses inherit it
        _agent_thread("wflo-agent-recv", self._receive)
        self.sender.send(
            {
                "type": "ready",
                "token": self.token,
                "protocol": protocol.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
                "llm_proxy": None if self.proxy is None else {"port": self.proxy.port},
            }
        )
        while True:
            try:
                frame = self.inbox.get()
                if frame["type"] == "shutdown":
                    self.sender.close()
                    return 0
                self.kernel.run(frame)
            except KeyboardInterrupt:  # a late interrupt between cells: nothing to stop
                signal.signal(signal.SIGINT, _sigint_outside_cell)

    def _receive(self) -> None:
        _block_sigint()
        while True:
            try:
                frame = protocol.recv_frame(self.sock)
            except protocol.ChannelClosed:
                self.router.channel_lost("the host closed the channel")
                os._exit(0)
            except (protocol.ProtocolError, OSError) as exc:
                self.diag(f"wflo-agent: channel error ({exc}); exiting")
                self.router.channel_lost(f"channel error ({exc})")
                os._exit(EXIT_CHANNEL_LOST)
            kind = frame["type"]
            if kind in protocol.LLM_HOST_FRAME_TYPES:
                self.router.deliver(frame)  # never blocks; unknown ids are dropped
            elif kind == "ping":
                self.sender.send({"type": "pong", "id": frame.get("id")})
            elif kind == "interrupt":
                cell_id = frame.get("id")
                self.kernel.interrupt(None if cell_id is None else str(cell_id))
            elif kind == "exec":
                # before the cell can start: no ``accepted`` means the cell never ran
                self.sender.send({"type": "accepted", "id": frame.get("id")})
                self.inbox.put(frame)
            elif kind == "shutdown":
                self.inbox.put(frame)
            # unknown frames are ignored


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python3 -I agent.py /run/wflo/<socket>\n")
        return 2
    token = os.environ.pop("WFLO_AGENT_TOKEN", "")
    llm_timeout_s = protocol.LLM_IDLE_TIMEOUT_S
    with contextlib.suppress(ValueError):
        llm_timeout_s = float(os.environ.pop("WFLO_AGENT_LLM_TIMEOUT_S", "") or llm_timeout_s)
    agent = Agent(argv[1], token, llm_timeout_s)
    try:
        code = agent.serve()
    except BaseException:
        agent.diag("wflo-agent: internal error\n" + traceback.format_exc())
        os._exit(70)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
