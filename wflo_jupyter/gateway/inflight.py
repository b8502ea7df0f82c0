"""Cancelling a step's LLM calls in flight: which thread makes which step's call, and
which provider connection that thread is reading from or writing to right now.

``InflightCalls`` is the registry: the gateway enters ``call(step_id)`` around a paid
call, on the thread that makes it; ``cancel_step`` marks the step cancelled and shuts
down (``SHUT_RDWR``) the socket each of its calls is using, so a thread blocked on the
provider wakes at once with a transport error and the provider sees the connection
close (it stops generating, and bills nothing more). The call then ends with
``CallCancelled``: its reservation is released, and the cell's SDK gets a 499.

The sockets are known through ``TrackingBackend``, an httpcore network backend whose
streams note, on every read and write, which thread uses them (a kept-alive connection
moves between threads from one call to the next).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx


class CallCancelled(Exception):
    """The call's step was cancelled while the call was waiting or in flight."""


class InflightCalls:
    """Thread-safe: step id -> the threads making its calls; thread -> its connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, set[int]] = {}
        self._cancelled: set[str] = set()
        self._streams: dict[int, httpcore.NetworkStream] = {}

    @contextlib.contextmanager
    def call(self, step_id: str | None) -> Iterator[None]:
        """Around one call of ``step_id`` on this thread; ``CallCancelled`` at once when
        the step is already cancelled."""
        if step_id is None:
            yield
            return
        me = threading.get_ident()
        with self._lock:
            if step_id in self._cancelled:
                raise CallCancelled(step_id)
            self._threads.setdefault(step_id, set()).add(me)
        try:
            yield
        finally:
            with self._lock:
                threads = self._threads.get(step_id)
                if threads is not None:
                    threads.discard(me)
                    if not threads:
                        del self._threads[step_id]
                self._streams.pop(me, None)

    def cancelled_here(self) -> bool:
        """Whether the call on this thread belongs to a cancelled step."""
        me = threading.get_ident()
        with self._lock:
            return any(me in self._threads.get(step, ()) for step in self._cancelled)

    def cancel_step(self, step_id: str) -> int:
        """Cancel ``step_id``'s calls: later ones are refused, those in flight have their
        connection shut down. How many connections were shut down."""
        with self._lock:
            self._cancelled.add(step_id)
            streams = [
                self._streams[t] for t in self._threads.get(step_id, ()) if t in self._streams
            ]
        closed = 0
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    closed += 1
        return closed

    def forget(self, step_id: str) -> None:
        """The step is over: its id need not be remembered any more."""
        with self._lock:
            self._cancelled.discard(step_id)

    def using(self, stream: httpcore.NetworkStream) -> None:
        me = threading.get_ident()
        with self._lock:
            self._streams[me] = stream


class _TrackedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, calls: InflightCalls) -> None:
        self._inner = inner
        self._calls = calls

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._calls.using(self._inner)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._calls.using(self._inner)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _TrackedStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._calls
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class TrackingBackend(httpcore.SyncBackend):
    """httpcore's socket backend, with streams that tell ``calls`` who uses them."""

    def __init__(self, calls: InflightCalls) -> None:
        self.calls = calls

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        return _TrackedStream(stream, self.calls)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = super().connect_unix_socket(path, timeout, socket_options)
        return _TrackedStream(stream, self.calls)


def tracking_client(calls: InflightCalls) -> httpx.Client:
    """The providers' HTTP client, its connections known to ``calls``."""
    transport = httpx.HTTPTransport()
    pool = transport._pool
    pool._network_backend = TrackingBackend(calls)
    return httpx.Client(transport=transport, timeout=httpx.Timeout(600.0, connect=10.0))
