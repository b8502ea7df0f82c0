"""``SandboxSession``: one long-lived sandboxed agent per kernel session, host side.

Owns the sandbox's whole life: the 0700 socket directory and the Unix socket the host
LISTENS on, starting the agent through an ``AgentLauncher`` (the isolation backend), the
handshake (``ready`` with a per-sandbox token), running cells over the framed channel
(``sandbox.agent.protocol``), timeouts (interrupt, then kill after a grace period),
telling apart a cell error, a timeout, an OOM kill and a dead agent, replacing a lost
sandbox on the next cell, idle stop, ``--fresh`` throwaway sandboxes, and removing
everything on ``close()``. ``reap_orphans`` removes containers of kernels that died.

Isolation backends (``AgentLauncher`` -> ``AgentHandle``; the channel, protocol,
timeouts and death detection above are the same for all of them):

- ``DockerLauncher`` (``isolation == "docker"``, the default): a hardened container
  (same hardening as ``docker_engine.hardened_options``, plus the read-only agent and
  socket binds and ``--init``);
- ``sandbox.bwrap.BubblewrapLauncher`` (``"bubblewrap"``): the agent under ``bwrap``
  with the host's ``python3``; weaker, and every cell says so;
- ``sandbox.isolation.UnisolatedLauncher`` (``"unisolated"``): a plain host subprocess,
  only when explicitly requested; every cell says it is not isolated.

Thread model: ``execute``/``start``/``restart``/``stop_if_idle`` serialise on one lock;
``interrupt()`` and ``close()`` may be called from any thread while a cell runs.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import format_size
from wflo_jupyter.sandbox.agent import AGENT_DIR
from wflo_jupyter.sandbox.agent.protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES,
    ChannelClosed,
    Frame,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    llm_error_response,
    llm_route,
    recv_frame,
)
from wflo_jupyter.sandbox.docker_engine import (
    LABEL_PREFIX,
    TMP_TMPFS_SIZE,
    WORKSPACE_TMPFS_SIZE,
    check_image,
    hardened_options,
)
from wflo_jupyter.sandbox.values import ValueTransferError, decode_outputs, encode_inputs

MB = 1024 * 1024
DEFAULT_IMAGE = "wflo-runtime:python3.11"
DEFAULT_OUTPUT_CAP = 10 * MB
AGENT_MOUNT = "/opt/wflo-agent"
SOCKET_MOUNT = "/run/wflo"
SOCKET_NAME = "agent.sock"
SANDBOX_UID = 1000
AGENT_EXIT_CHANNEL_LOST = 75
"""The agent's exit code when its channel broke or was closed by the cell."""
ENV_ALLOWLIST = ("HOME", "PATH", "LANG", "PYTHONUNBUFFERED", "MPLBACKEND", "MPLCONFIGDIR")
SANDBOX_ENV = {
    "HOME": "/workspace",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp",
}
"""The whole environment of a sandbox (plus the agent's token, which the agent removes
from ``os.environ`` before any cell runs). Nothing from the host's environment."""

StreamCallback = Callable[[str, str], None]
log = logging.getLogger(__name__)

LlmHandler = Callable[[Frame, Callable[[Frame], None]], None]
LlmFastPath = Callable[[Frame, Callable[[Frame], None]], bool]
DisplayCallback = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of a sandbox container (memory without swap)."""

    memory_bytes: int = 512 * MB
    cpus: float = 1.0
    pids_limit: int = 128
    workspace_size: str = WORKSPACE_TMPFS_SIZE
    tmp_size: str = TMP_TMPFS_SIZE


@dataclass
class ExecResult:
    """The outcome of one cell in a sandbox session.

    ``exit_reason``: ``ok`` | ``error`` (the code raised) | ``timeout`` | ``interrupted``
    | ``oom`` | ``killed`` (the session was closed under the cell) | ``agent_died``.
    ``state_lost``: the namespace the earlier cells built is gone (this cell's failure
    destroyed the container, or the container had been stopped or had died since the last
    cell and this cell ran in a new one); ``notices`` say which, one line each.
    ``isolation``: ``docker`` | ``bubblewrap`` | ``unisolated``; the two weaker ones put
    a one-line notice saying so first in ``notices`` of every cell.
    """

    ok: bool
    exit_reason: str
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    output_errors: dict[str, str] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    displays: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    state_lost: bool = False
    notices: list[str] = field(default_factory=list)
    execution_count: int | None = None
    container_id: str = ""
    isolation: str = "docker"

    @property
    def error_line(self) -> str:
        """``"ename: evalue"`` (empty when the cell succeeded)."""
        if self.ok:
            return ""
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


def default_socket_base() -> Path:
    return Path(tempfile.gettempdir()) / f"wflo-{os.geteuid()}"


def _private_dir(path: Path) -> Path:
    """``path`` as a directory owned by us, mode 0700, not a symlink (created if missing)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SandboxError(f"sandbox socket directory {path} is not a directory owned by us")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def _grant_sandbox_access(directory: Path, sock_path: Path) -> None:
    """Let uid 1000 in the container connect to the socket, and as few others as we can."""
    euid = os.geteuid()
    if euid == 0:
        os.chown(directory, SANDBOX_UID, SANDBOX_UID)  # stays 0700: root and uid 1000 only
        os.chown(sock_path, SANDBOX_UID, SANDBOX_UID)
    elif euid != SANDBOX_UID:
        # Cannot chown: open the path to others; the per-container token in `ready`
        # authenticates the agent, and the socket is unlinked once it connected.
        directory.chmod(0o711)
        sock_path.chmod(0o666)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(code - 128).name}"
    return f"exit code {code}"


# -- isolation backends -----------------------------------------------------------------


@dataclass(frozen=True)
class LaunchRequest:
    """What a launcher needs to start one agent: it must run ``agent.py`` from
    ``agent_dir`` with the Unix socket ``sock_dir / socket_name`` as its argument (where
    the sandbox sees it), ``token`` in ``WFLO_AGENT_TOKEN`` and ``SANDBOX_ENV`` as the
    rest of its environment, within ``limits``."""

    sock_dir: Path
    socket_name: str
    token: str
    limits: SandboxLimits
    labels: Mapping[str, str]
    image: str
    agent_dir: Path
    role: str

    @property
    def environment(self) -> dict[str, str]:
        return {**SANDBOX_ENV, "WFLO_AGENT_TOKEN": self.token}


class AgentHandle(ABC):
    """One started agent (a container, a bubblewrap sandbox, a host process)."""

    notice: str | None = None
    """A one-line notice every cell run by this agent carries (the isolation it gets
    when that is weaker than Docker's), or None."""

    @property
    @abstractmethod
    def id(self) -> str:
        """Container id, or ``bwrap-<pid>`` / ``host-<pid>``."""

    @property
    def pid(self) -> int | None:
        """The host pid of the launched process (None for a container)."""
        return None

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once the agent has ended (signals as 128+N), else None."""

    def known_dead(self) -> bool:
        """True when it is already known, without asking an engine, that the sandbox has
        ended (a process that exited); False when unknown (the channel tells)."""
        return False

    @abstractmethod
    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        """(exit code, or None if it had to be killed; OOM-killed?) once it ended."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL everything the agent started (idempotent, never raises)."""

    @abstractmethod
    def destroy(self) -> None:
        """Kill it and remove everything it left (idempotent, never raises)."""

    @abstractmethod
    def apply_limits(self, limits: SandboxLimits) -> str | None:
        """Change memory / CPU / pids limits in place: None, or why that failed."""

    def logs_tail(self) -> str:
        """The last lines the agent wrote to its own stderr (for start-up failures)."""
        return ""

    def explain_error(self, ename: str, limits: SandboxLimits) -> str | None:
        """A one-line explanation of a cell error this sandbox caused (e.g. which limit
        raised a ``MemoryError``), or None."""
        return None


class AgentLauncher(ABC):
    """Starts agents with one kind of isolation (``isolation`` names it)."""

    isolation: str = ""

    def prepare(self, image: str) -> None:  # noqa: B027 - optional hook
        """Checks before the first launch of a session (e.g. that ``image`` exists)."""

    def socket_base(self, requested: Path | None) -> Path:
        """The private directory under which per-sandbox socket directories are made."""
        base = requested or default_socket_base()
        # A Unix socket path has to fit in 108 bytes.
        if len(str(base)) > 60:
            base = default_socket_base()
        return _private_dir(base)

    def grant_access(self, directory: Path, sock_path: Path) -> None:
        """Let the sandbox's user connect to the socket (Docker's uid 1000 by default)."""
        _grant_sandbox_access(directory, sock_path)

    @abstractmethod
    def launch(self, request: LaunchRequest) -> AgentHandle:
        """Start the agent (``SandboxError`` if that failed; never leaks it)."""


class DockerAgent(AgentHandle):
    """The agent in a hardened Docker container."""

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.client = client
        self.container = container

    @property
    def id(self) -> str:
        return self.container.id or ""

    def poll(self) -> int | None:
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            return int(self.container.attrs.get("State", {}).get("ExitCode", -1))
        return None

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        code: int | None
        try:
            status = self.container.wait(timeout=timeout_s)
            code = int(status.get("StatusCode", -1))
        except (requests.exceptions.RequestException, APIError, NotFound):
            code = None
            self.kill()
        oom = False
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.reload()
            oom = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
        return code, oom

    def kill(self) -> None:
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.kill()

    def destroy(self) -> None:
        with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
            self.container.remove(force=True)

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        api = cast(Any, self.client.api)
        data = {
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "NanoCpus": int(limits.cpus * 1e9),
            "PidsLimit": limits.pids_limit,
        }
        try:
            response = api._post_json(api._url("/containers/{0}/update", self.id), data=data)
            api._raise_for_status(response)
        except (APIError, requests.exceptions.RequestException) as exc:
            explanation = getattr(exc, "explanation", None) or str(exc)
            return " ".join(explanation.split())
        return None

    def logs_tail(self) -> str:
        try:
            return self.container.logs(tail=5).decode("utf-8", "replace")
        except (APIError, NotFound, requests.exceptions.RequestException):
            return ""


class DockerLauncher(AgentLauncher):
    """Session containers on a Docker engine (the default, strongest isolation)."""

    isolation = "docker"

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def prepare(self, image: str) -> None:
        check_image(self.client, image)

    def launch(self, request: LaunchRequest) -> AgentHandle:
        limits = request.limits
        options = hardened_options(
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            pids_limit=limits.pids_limit,
            labels=request.labels,
            environment=request.environment,
            workspace_size=limits.workspace_size,
            tmp_size=limits.tmp_size,
        )
        container: Container | None = None
        try:
            container = self.client.containers.create(
                request.image,
                [
                    "python3",
                    "-I",
                    f"{AGENT_MOUNT}/agent.py",
                    f"{SOCKET_MOUNT}/{request.socket_name}",
                ],
                detach=True,
                init=True,
                volumes={
                    str(request.agent_dir): {"bind": AGENT_MOUNT, "mode": "ro"},
                    str(request.sock_dir): {"bind": SOCKET_MOUNT, "mode": "ro"},
                },
                **options,
            )
            container.start()
            return DockerAgent(self.client, container)
        except APIError as exc:
            self._remove(container)
            raise SandboxError(
                f"could not start the sandbox: {' '.join(str(exc.explanation or exc).split())}"
            ) from None
        except (DockerException, requests.exceptions.RequestException) as exc:
            self._remove(container)
            raise SandboxError(
                f"could not start the sandbox: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            self._remove(container)
            raise

    @staticmethod
    def _remove(container: Container | None) -> None:
        if container is not None:  # failed half way: never leak it
            with contextlib.suppress(APIError, NotFound, requests.exceptions.RequestException):
                container.remove(force=True)


class _Box:
    """One running sandbox (its agent handle) and its channel."""

    def __init__(
        self,
        handle: AgentHandle,
        sock: socket.socket,
        sock_dir: Path,
        limits: SandboxLimits,
        ready: Frame,
    ) -> None:
        self.handle = handle
        self.sock = sock
        self.sock_dir = sock_dir
        self.limits = limits
        self.ready = ready
        self.decoder = FrameDecoder(MAX_FRAME_BYTES)
        self.send_lock = threading.Lock()
        self.cells = 0
        """Cells the agent accepted (so ran, or began to): state that its death loses."""
        self.destroyed = False

    @property
    def container_id(self) -> str:
        return self.handle.id

    def send(self, frame: Frame) -> None:
        data = encode_frame(frame)
        with self.send_lock:
            self.sock.sendall(data)

    def read(self, timeout_s: float) -> list[Frame]:
        """Frames that arrive within ``timeout_s`` ([] if none); ``ChannelClosed`` at EOF."""
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
        if not readable:
            return []
        data = self.sock.recv(1 << 20)
        if not data:
            self.decoder.close()
            raise ChannelClosed("the sandbox agent closed the channel")
        return self.decoder.feed(data)

    def channel_alive(self) -> bool:
        """False if the agent has gone away since the last cell (EOF or junk waiting)."""
        try:
            waiting = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(waiting)  # b"": EOF, the agent is gone

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        """(exit code or None if it had to be killed, OOM-killed?) once the sandbox ended."""
        return self.handle.wait_exit(timeout_s)

    def kill(self) -> None:
        self.handle.kill()

    def destroy(self) -> None:
        """Close the channel, remove the sandbox and the socket directory (idempotent)."""
        if self.destroyed:
            return
        self.destroyed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        self.handle.destroy()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


class SandboxSession:
    """A persistent sandbox: one container (or other isolated agent) reused by every cell.

    Started lazily by the first ``execute`` (or eagerly by ``start()``, e.g. from a
    background thread after ``%load_ext``). A sandbox lost to a timeout kill, an OOM
    kill, a dead agent or ``stop_if_idle`` is replaced by the next ``execute``.

    ``launcher`` picks the isolation (default: a ``DockerLauncher`` on ``client``); see
    ``sandbox.isolation.open_sandbox_session`` to choose it from ``WFLO_ISOLATION``.
    """

    def __init__(
        self,
        client: docker.DockerClient | None,
        session_id: str,
        *,
        image: str = DEFAULT_IMAGE,
        limits: SandboxLimits | None = None,
        socket_base: Path | None = None,
        role: str = "session",
        ready_timeout_s: float = 30.0,
        interrupt_grace_s: float = 2.0,
        agent_dir: Path = AGENT_DIR,
        launcher: AgentLauncher | None = None,
    ) -> None:
        if launcher is None:
            if client is None:
                raise SandboxError("a SandboxSession needs a Docker client or a launcher")
            launcher = DockerLauncher(client)
        self.launcher = launcher
        self.client = client
        self.session_id = session_id
        self.image = image
        self.limits = limits or SandboxLimits()
        self.socket_base = socket_base
        self.role = role
        self.ready_timeout_s = ready_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.agent_dir = agent_dir
        self._lock = threading.RLock()
        self.llm_handler: LlmHandler | None = None
        # tried first on the reading thread (a cache hit answered without a hand-off)
        self.llm_fast_path: LlmFastPath | None = None
        self._llm_pool: ThreadPoolExecutor | None = None
        self._llm_futures: set[Future[None]] = set()
        self._box: _Box | None = None
        self._image_checked = False
        self._busy = False
        self._closing = False
        self._last_used = time.monotonic()
        self._lost_notice: str | None = None
        self._running_cell: str | None = None
        self._interrupt_request: tuple[str, float] | None = None

    # -- introspection ------------------------------------------------------------------

    @property
    def container_id(self) -> str | None:
        """The running sandbox's id (a container id, ``bwrap-<pid>``, ``host-<pid>``)."""
        box = self._box
        return box.container_id if box is not None else None

    @property
    def isolation(self) -> str:
        """``docker`` | ``bubblewrap`` | ``unisolated``."""
        return self.launcher.isolation

    @property
    def running(self) -> bool:
        return self._box is not None

    @property
    def idle_seconds(self) -> float:
        return 0.0 if self._busy else time.monotonic() - self._last_used

    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}.session": self.session_id,
            f"{LABEL_PREFIX}.kernel-pid": str(os.getpid()),
            f"{LABEL_PREFIX}.hostname": socket.gethostname(),
            f"{LABEL_PREFIX}.created": datetime.now(UTC).isoformat(timespec="seconds"),
            f"{LABEL_PREFIX}.role": self.role,
        }

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the container and wait for its agent (no-op when one is running)."""
        with self._lock:
            if self._box is None:
                self._box = self._launch()

    def restart(self) -> None:
        """Replace the container by a new one (the namespace is dropped)."""
        with self._lock:
            self._discard()
            self._lost_notice = None
            self._box = self._launch()

    def close(self) -> None:
        """Remove the container and the socket directory. Idempotent; may be called from
        another thread while a cell runs (that cell then ends with ``killed``)."""
        self._closing = True
        try:
            box = self._box
            if box is not None:
                box.kill()  # unblocks a running execute, which then cleans up
            with self._lock:
                self._discard()
                self._lost_notice = None
                pool, self._llm_pool = self._llm_pool, None
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        finally:
            self._closing = False

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop_if_idle(self, idle_s: float) -> bool:
        """Stop the container if no cell ran for ``idle_s`` seconds; the next ``execute``
        starts a new one and reports ``state_lost`` with a notice. True if it stopped."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            box = self._box
            if box is None or self._busy or time.monotonic() - self._last_used < idle_s:
                return False
            self._discard()
            if box.cells:
                self._lost_notice = (
                    f"the sandbox was idle for more than {idle_s:g} s and was stopped; "
                    "this cell runs in a new one, state from earlier cells was lost"
                )
            return True
        finally:
            self._lock.release()

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running cell (any thread). If the cell does not
        stop within the grace period, its container is killed. True if a cell was running."""
        box, cell_id = self._box, self._running_cell
        if box is None or cell_id is None:
            return False
        self._interrupt_request = (cell_id, time.monotonic())
        with contextlib.suppress(OSError, ProtocolError):
            box.send({"type": "interrupt", "id": cell_id})
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
        """
        payload = encode_inputs(inputs or {})
        with self._lock:
            self._busy = True
            try:
                return self._execute(
                    code,
                    payload,
                    list(outputs),
                    timeout_s,
                    on_stream,
                    on_display,
                    output_cap,
                    limits,
                )
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
        try:
            return fresh.execute(code, **kwargs)
        finally:
            fresh.close()

    def _execute(
        self,
        code: str,
        inputs: dict[str, dict[str, str]],
        outputs: list[str],
        timeout_s: float,
        on_stream: StreamCallback | None,
        on_display: DisplayCallback | None,
        output_cap: int,
        limits: SandboxLimits | None,
    ) -> ExecResult:
        result = ExecResult(ok=False, exit_reason="error", isolation=self.isolation)
        parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        try:
            return self._run_cell(
                result,
                parts,
                code,
                inputs,
                outputs,
                timeout_s,
                on_stream,
                on_display,
                output_cap,
                limits,
            )
        finally:
            result.stdout = "".join(parts["stdout"])
            result.stderr = "".join(parts["stderr"])

    def _run_cell(
        self,
        result: ExecResult,
        parts: dict[str, list[str]],
        code: str,
        inputs: dict[str, dict[str, str]],
        outputs: list[str],
        timeout_s: float,
        on_stream: StreamCallback | None,
        on_display: DisplayCallback | None,
        output_cap: int,
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
        cell_id = uuid.uuid4().hex
        frame = {
            "type": "exec",
            "id": cell_id,
            "code": code,
            "inputs": inputs,
            "outputs": outputs,
            "output_cap": int(output_cap),
        }
        retry_args = (result, parts, code, inputs, outputs, timeout_s, on_stream, on_display)
        try:
            box.send(frame)
        except ProtocolError as exc:
            raise ValueTransferError("inputs", f"cannot send the cell: {exc}") from None
        except OSError as exc:
            if self._died_before_start(exc, accepted=False, retried=retried):
                self._replace_dead(box, result)
                return self._run_cell(*retry_args, output_cap, limits, retried=True)
            return self._lost(box, result, started, exc)
        self._running_cell = cell_id
        deadline = started + timeout_s
        interrupted_by: str | None = None
        accepted = False
        host_cap = int(output_cap) + MB  # the agent enforces the cap; this guards the host
        received = 0
        callback_failed = False
        while True:
            now = time.monotonic()
            request = self._interrupt_request
            if request is not None and request[0] == cell_id and interrupted_by is None:
                interrupted_by = "user"
                deadline = request[1] + self.interrupt_grace_s
            if now >= deadline:
                if interrupted_by is None:
                    interrupted_by = "timeout"
                    deadline = now + self.interrupt_grace_s
                    with contextlib.suppress(OSError):
                        box.send({"type": "interrupt", "id": cell_id})
                    continue
                return self._kill_stuck(box, result, started, timeout_s, interrupted_by)
            try:
                frames = box.read(min(deadline - now, 0.25))
            except KeyboardInterrupt:  # the kernel was interrupted while waiting
                if interrupted_by is None:
                    self._interrupt_request = (cell_id, time.monotonic())
                    with contextlib.suppress(OSError):
                        box.send({"type": "interrupt", "id": cell_id})
                    continue
                return self._kill_stuck(box, result, started, timeout_s, interrupted_by)
            except (ProtocolError, OSError) as exc:
                if self._died_before_start(exc, accepted=accepted, retried=retried):
                    self._running_cell = None
                    self._replace_dead(box, result)
                    return self._run_cell(*retry_args, output_cap, limits, retried=True)
                return self._lost(box, result, started, exc)
            for incoming in frames:
                kind = incoming["type"]
                if kind == "llm_request":
                    self._serve_llm(box, incoming)
                    continue
                if incoming.get("id") != cell_id:
                    continue
                if kind == "accepted":
                    accepted = True
                    box.cells += 1  # cells that ran here: the state a death would lose
                elif kind == "stream":
                    text = str(incoming.get("text", ""))
                    name = "stderr" if incoming.get("name") == "stderr" else "stdout"
                    received += len(text)
                    if received > host_cap:
                        continue
                    parts[name].append(text)
                    if on_stream is not None:
                        try:
                            on_stream(name, text)
                        except Exception as exc:
                            callback_failed = self._callback_failed(result, exc, callback_failed)
                elif kind == "display":
                    data = incoming.get("data")
                    metadata = incoming.get("metadata")
                    if not isinstance(data, dict):
                        continue
                    metadata = metadata if isinstance(metadata, dict) else {}
                    if on_display is None:
                        result.displays.append((data, metadata))
                        continue
                    try:
                        on_display(data, metadata)
                    except Exception as exc:
                        callback_failed = self._callback_failed(result, exc, callback_failed)
                elif kind == "result":
                    self._finish(result, incoming, started, timeout_s, interrupted_by)
                    if not result.ok:
                        hint = box.handle.explain_error(result.ename, box.limits)
                        if hint and not result.evalue:
                            result.evalue = hint
                        elif hint:
                            result.notices.append(hint)
                    return result

    def _serve_llm(self, box: _Box, frame: Frame) -> None:
        """Hand an ``llm_request`` to the gateway on a worker thread (the read loop must
        keep delivering output); every request gets exactly one answer."""

        def send(reply: Frame) -> None:
            with contextlib.suppress(OSError):
                box.send(reply)

        handler, fast = self.llm_handler, self.llm_fast_path
        if handler is not None and fast is not None:
            try:
                if fast(frame, send):
                    return
            except Exception as exc:  # the worker path still answers it
                log.warning("LLM fast path failed: %s: %s", type(exc).__name__, exc)
        if handler is None:
            route = llm_route(str(frame.get("path", "")))
            send(
                llm_error_response(
                    str(frame.get("id", "")),
                    route[0] if route else "openai",
                    503,
                    "no LLM gateway is attached to this sandbox",
                )
            )
            return
        with self._lock:
            if self._llm_pool is None:
                self._llm_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="wflo-llm")
            pool = self._llm_pool
        future = pool.submit(handler, frame, send)
        with self._lock:
            self._llm_futures.add(future)
        future.add_done_callback(self._llm_futures.discard)

    def drain_llm(self, timeout_s: float = 10.0) -> None:
        """Wait for LLM calls still being recorded (a cache hit answers before its ledger
        row is written), so a finished step's report includes every call."""
        with self._lock:
            pending = list(self._llm_futures)
        if pending:
            wait_futures(pending, timeout=timeout_s)

    @staticmethod
    def _callback_failed(result: ExecResult, exc: Exception, already: bool) -> bool:
        if not already:
            result.notices.append(f"an output callback failed: {type(exc).__name__}: {exc}")
        return True

    def _finish(
        self,
        result: ExecResult,
        frame: Frame,
        started: float,
        timeout_s: float,
        interrupted_by: str | None,
    ) -> ExecResult:
        result.seconds = time.monotonic() - started
        count = frame.get("execution_count")
        result.execution_count = count if isinstance(count, int) else None
        payloads = frame.get("outputs")
        if isinstance(payloads, dict):
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

    def _kill_stuck(
        self,
        box: _Box,
        result: ExecResult,
        started: float,
        timeout_s: float,
        interrupted_by: str | None,
    ) -> ExecResult:
        """The cell ignored the interrupt for the whole grace period: kill the container."""
        box.kill()
        self._discard()
        result.seconds = time.monotonic() - started
        result.state_lost = True
        result.ok = False
        if interrupted_by == "user":
            result.exit_reason = "interrupted"
            result.ename = "KeyboardInterrupt"
            result.evalue = (
                f"the cell did not stop within {self.interrupt_grace_s:g} s of the interrupt; "
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

    def _died_before_start(self, exc: Exception, *, accepted: bool, retried: bool) -> bool:
        """The channel ended before the agent accepted the cell: the sandbox died before
        this cell (between cells, or while it was being sent), so the cell never ran and
        may run in a new sandbox, once. Not when the session is closing, and not for a
        corrupted channel (the agent may be alive and running something)."""
        corrupted = isinstance(exc, ProtocolError) and not isinstance(exc, ChannelClosed)
        return not accepted and not retried and not self._closing and not corrupted

    def _replace_dead(self, box: _Box, result: ExecResult) -> None:
        """Drop a sandbox that died while no cell ran; say so when it held state."""
        code, oom = box.wait_exit(2.0)
        if box is self._box:
            self._discard()
        else:
            box.destroy()
        what = (
            f"memory limit {format_size(box.limits.memory_bytes)} exceeded (OOM-killed)"
            if oom
            else f"the sandbox agent died ({_describe_exit(code)})"
        )
        if box.cells:
            result.state_lost = True
            result.notices.append(
                f"{what} after the last cell; this cell runs in a new sandbox, "
                "state from earlier cells was lost"
            )

    def _lost(self, box: _Box, result: ExecResult, started: float, exc: Exception) -> ExecResult:
        """The channel ended or broke while a cell ran: find out why, drop the container."""
        corrupted = isinstance(exc, ProtocolError) and not isinstance(exc, ChannelClosed)
        if corrupted:
            box.kill()
        code, oom = box.wait_exit(3.0)
        self._discard()
        result.seconds = time.monotonic() - started
        result.ok = False
        result.state_lost = True
        if self._closing:
            result.exit_reason = "killed"
            result.ename = "SandboxKilled"
            result.evalue = "the sandbox session was closed while the cell ran"
        elif oom:
            result.exit_reason = "oom"
            result.ename = "MemoryLimitExceeded"
            result.evalue = (
                f"memory limit {format_size(box.limits.memory_bytes)} exceeded (OOM-killed); "
                "state was lost"
            )
        elif corrupted:
            result.exit_reason = "agent_died"
            result.ename = "SandboxDied"
            result.evalue = (
                f"the sandbox channel was corrupted ({exc}); the sandbox was killed "
                "and state was lost"
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
            result.evalue = f"the sandbox agent died ({_describe_exit(code)}); state was lost"
        return result

    def _apply_limits(self, box: _Box, limits: SandboxLimits, result: ExecResult) -> None:
        """Change memory / CPU / pids limits of the running sandbox in place."""
        problem = box.handle.apply_limits(limits)
        if problem is not None:
            result.notices.append(
                f"could not change the running sandbox's limits ({problem}); "
                f"this cell runs with memory {format_size(box.limits.memory_bytes)}, "
                f"{box.limits.cpus:g} CPUs, {box.limits.pids_limit} pids"
            )
            return
        box.limits = replace(
            limits, workspace_size=box.limits.workspace_size, tmp_size=box.limits.tmp_size
        )

    # -- sandboxes ----------------------------------------------------------------------

    def _discard(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            box.destroy()

    def _socket_dir(self) -> Path:
        base = self.launcher.socket_base(self.socket_base)
        return Path(tempfile.mkdtemp(prefix=f"s{os.getpid()}-", dir=base))

    def _launch(self, limits: SandboxLimits | None = None) -> _Box:
        """Start one sandbox and handshake its agent. Never leaks one when this fails."""
        limits = limits or self.limits
        if not self._image_checked:
            self.launcher.prepare(self.image)
            self._image_checked = True
        sock_dir = self._socket_dir()
        sock_path = sock_dir / SOCKET_NAME
        listener: socket.socket | None = None
        handle: AgentHandle | None = None
        conn: socket.socket | None = None
        launched: _Box | None = None
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(sock_path))
            listener.listen(4)
            self.launcher.grant_access(sock_dir, sock_path)
            token = secrets.token_hex(16)
            handle = self.launcher.launch(
                LaunchRequest(
                    sock_dir=sock_dir,
                    socket_name=SOCKET_NAME,
                    token=token,
                    limits=limits,
                    labels=self.labels(),
                    image=self.image,
                    agent_dir=self.agent_dir,
                    role=self.role,
                )
            )
            conn, ready = self._accept(listener, handle, token)
            box = _Box(handle, conn, sock_dir, limits, ready)
            conn = None
            handle = None
            launched = box
            return box
        finally:
            if listener is not None:
                listener.close()
            with contextlib.suppress(OSError):
                sock_path.unlink()  # nobody else can connect from now on
            if conn is not None:
                conn.close()
            if handle is not None:  # failed half way: never leak it
                handle.destroy()
            if launched is None:
                shutil.rmtree(sock_dir, ignore_errors=True)

    def _accept(
        self, listener: socket.socket, handle: AgentHandle, token: str
    ) -> tuple[socket.socket, Frame]:
        """Wait for the agent to connect and say ``ready`` with the right token."""
        deadline = time.monotonic() + self.ready_timeout_s
        next_check = time.monotonic() + 0.5
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise SandboxError(
                    f"the sandbox agent did not connect within {self.ready_timeout_s:g} s"
                    + self._logs_hint(handle)
                )
            readable, _, _ = select.select([listener], [], [], min(0.1, deadline - now))
            if not readable:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + 0.5
                    code = handle.poll()
                    if code is not None:
                        raise SandboxError(
                            f"the sandbox agent exited at start (exit code {code})"
                            + self._logs_hint(handle)
                        )
                continue
            conn, _ = listener.accept()
            try:
                conn.settimeout(max(0.5, deadline - time.monotonic()))
                frame = recv_frame(conn, HANDSHAKE_MAX_FRAME_BYTES)
                conn.settimeout(None)
            except (ProtocolError, OSError):
                conn.close()
                continue
            presented = frame.get("token")
            if (
                frame["type"] == "ready"
                and isinstance(presented, str)
                and hmac.compare_digest(presented.encode(), token.encode())
            ):
                return conn, frame
            conn.close()

    @staticmethod
    def _logs_hint(handle: AgentHandle) -> str:
        logs = handle.logs_tail().strip()
        last = logs.splitlines()[-1].strip() if logs else ""
        return f": {last}" if last else ""


# -- orphans ----------------------------------------------------------------------------


def _process_started_after(pid: int, moment: datetime) -> bool:
    """True if process ``pid`` started after ``moment`` (its pid was reused); False if
    unknown (no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > moment.timestamp() + 2


def kernel_alive(pid: int, created: str | None = None) -> bool:
    """Is ``pid`` a live process on this host that existed when ``created`` (ISO time)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if created:
        try:
            moment = datetime.fromisoformat(created)
        except ValueError:
            return True
        if _process_started_after(pid, moment):
            return False
    return True


def reap_orphans(client: docker.DockerClient, *, socket_base: Path | None = None) -> list[str]:
    """Remove ``org.wflo.*`` containers whose kernel process is gone from this host (and
    their leftover socket directories). Returns the ids of the removed containers."""
    host = socket.gethostname()
    removed: list[str] = []
    found = client.containers.list(all=True, filters={"label": f"{LABEL_PREFIX}.kernel-pid"})
    for container in found:
        labels = container.labels or {}
        if labels.get(f"{LABEL_PREFIX}.hostname", host) != host:
            continue
        try:
            pid = int(labels.get(f"{LABEL_PREFIX}.kernel-pid", ""))
        except ValueError:
            continue
        if pid == os.getpid() or kernel_alive(pid, labels.get(f"{LABEL_PREFIX}.created")):
            continue
        try:
            container.remove(force=True)
        except NotFound:
            continue
        except APIError:
            continue
        removed.append(container.id or "")
    reap_socket_dirs(socket_base or default_socket_base())
    return removed


def reap_socket_dirs(base: Path) -> list[Path]:
    """Remove the ``s<kernel pid>-*`` directories under ``base`` whose kernel is gone."""
    removed: list[Path] = []
    if base.is_dir():
        for entry in base.iterdir():
            pid_text = entry.name[1:].split("-", 1)[0]
            if (
                entry.name.startswith("s")
                and pid_text.isdigit()
                and int(pid_text) != os.getpid()
                and not kernel_alive(int(pid_text))
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed
