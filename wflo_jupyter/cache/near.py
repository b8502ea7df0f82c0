"""``NearCache``: cache entries this process read from Redis, kept in memory and dropped
the moment Redis reports that their key changed.

This is Redis's server-assisted client-side caching. One RESP3 connection per process
turns on ``CLIENT TRACKING ... BCAST PREFIX <prefix>``, and Redis then pushes an
``invalidate`` message on it for every key under the prefix that is written, deleted,
expired or evicted, by any client, and a null one for a flush. A dedicated thread reads
those pushes and drops the keys. An entry is served only while that feed is connected:
when it breaks (Redis restarted, the connection killed, no PONG), the process forgets
everything, serves nothing from memory, and reconnects every ``retry_after_s`` (every
``refused_retry_s`` when Redis refused it: an ACL without ``CLIENT``, a server without
RESP3).

Fills cannot race an invalidation. A reader takes a ``fill_token()`` before its GET. If
the key was invalidated, or the memory was flushed, after that token was taken, the
value it read may be stale, and ``fill`` drops it. Entries also carry their own expiry
(the key's PTTL when it was read), so a TTL holds even before Redis's expiry cycle gets
to the key. Memory is bounded by entry count and bytes (least recently used first).

Writes made by this process are forgotten at once through ``forget`` or ``forget_all``,
and the feed is not needed for them. Another process's change reaches this one in the
time a push takes to arrive, usually well under a millisecond on one host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import redis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_PING_EVERY_S = 5.0
DEFAULT_REFUSED_RETRY_S = 60.0  # after Redis refused the feed (an ACL, no RESP3)
_FEED_NAME_SUFFIX = "-invalidations"  # the feed's CLIENT LIST name: the client's + this
_INVALIDATED_KEEP = 10_000  # remembered invalidations (older ones: every fill before fails)


class NearCache(Generic[T]):
    """In-process copies of Redis values under ``prefix``, kept coherent by invalidation
    pushes. Thread-safe. ``start()`` is lazy and idempotent (the first ``get`` calls it);
    nothing is served until the feed is connected."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        refused_retry_s: float = DEFAULT_REFUSED_RETRY_S,
        ping_every_s: float = DEFAULT_PING_EVERY_S,
    ) -> None:
        if not prefix:
            raise ValueError("a near cache needs a non-empty key prefix")
        self._client = client
        self.prefix = prefix
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        self.refused_retry_s = refused_retry_s
        self.ping_every_s = ping_every_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[T, int, float]] = OrderedDict()
        self._bytes = 0
        self._seq = 0  # bumped by every invalidation and flush
        self._flushed_at = 0  # _seq at the last flush (or feed loss)
        self._invalidated: dict[str, int] = {}  # key -> _seq of its last invalidation
        self._forgotten_up_to = 0  # invalidations older than this were not kept
        self._armed = False  # the feed is connected: entries may be served
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._feed: Any = None  # the feed's redis-py Connection while connected
        self._announced_down = False
        self.served = 0  # hits answered from memory (for tests and benchmarks)

    # -- reads and fills ---------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        """Is the invalidation feed connected (so entries may be served)?"""
        return self._armed

    def get(self, key: str) -> T | None:
        """The remembered value of ``key``, or None (absent, expired, or feed down)."""
        if self._thread is None:
            self.start()
        if not self._armed:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, _size, expires_at = entry
            if time.monotonic() >= expires_at:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            self.served += 1
            return value

    def fill_token(self) -> int:
        """Take before reading a value from Redis; pass to ``fill``."""
        return self._seq

    def fill(
        self,
        key: str,
        value: T,
        size: int,
        ttl_s: float | None,
        token: int,
        *,
        read_started: float | None = None,
    ) -> bool:
        """Remember ``value`` (``size`` bytes, living ``ttl_s`` more seconds; None: no
        expiry) unless ``key`` was invalidated or memory flushed since ``token``, the
        feed is down, or it is too big. ``read_started`` (``time.monotonic()`` before the
        read that returned ``ttl_s``) makes the local expiry never later than Redis's.
        True if remembered."""
        if not key.startswith(self.prefix) or size > self.max_bytes:
            return False
        counted_from = time.monotonic() if read_started is None else read_started
        expires_at = counted_from + ttl_s if ttl_s is not None else float("inf")
        with self._lock:
            if (
                not self._armed
                or token < self._flushed_at
                or token < self._forgotten_up_to
                or self._invalidated.get(key, -1) > token
            ):
                return False
            self._drop(key)
            self._entries[key] = (value, size, expires_at)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            return True

    def forget(self, key: str) -> None:
        """Drop ``key`` now (this process changed it)."""
        with self._lock:
            self._invalidate(key)

    def forget_all(self) -> None:
        """Drop everything now (this process deleted many keys)."""
        with self._lock:
            self._flush()

    def __len__(self) -> int:
        return len(self._entries)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the feed thread (once)."""
        with self._lock:
            if self._thread is not None or self._closed.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="wflo-near-cache-feed", daemon=True
            )
            self._thread.start()

    def wait_armed(self, timeout_s: float) -> bool:
        """Start the feed and wait up to ``timeout_s`` for it to connect."""
        self.start()
        deadline = time.monotonic() + timeout_s
        while not self._armed and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._armed

    def close(self) -> None:
        """Stop the feed thread and forget everything."""
        self._closed.set()
        feed = self._feed
        if feed is not None:
            with contextlib.suppress(Exception):  # wakes the feed thread out of its read
                feed.disconnect()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        with self._lock:
            self._armed = False
            self._flush()

    # -- the feed ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            wait_s = self.retry_after_s
            try:
                self._follow()
            except ResponseError as exc:  # Redis refuses (no RESP3, ACL): ask again rarely
                wait_s = max(self.retry_after_s, self.refused_retry_s)
                if not self._announced_down and not self._closed.is_set():
                    log.info(
                        "LLM near cache off: Redis refused its invalidation feed (%s); "
                        "every hit reads Redis",
                        exc,
                    )
                    self._announced_down = True
            except Exception as exc:  # any failure (also a close() racing a read): reconnect
                if not self._announced_down and not self._closed.is_set():
                    log.info("LLM near cache off until Redis's invalidation feed is back: %s", exc)
                    self._announced_down = True
            finally:
                with self._lock:
                    self._armed = False
                    self._flush()
                feed, self._feed = self._feed, None
                if feed is not None:
                    with contextlib.suppress(Exception):  # already broken
                        feed.disconnect()
            self._closed.wait(wait_s)

    def _follow(self) -> None:
        """Connect, turn tracking on, then apply pushes until the connection breaks."""
        pool = self._client.connection_pool
        name = f"{pool.connection_kwargs.get('client_name') or 'wflo'}{_FEED_NAME_SUFFIX}"
        kwargs = {**pool.connection_kwargs, "protocol": 3, "client_name": name}
        feed = pool.connection_class(**kwargs)
        self._feed = feed
        feed.connect()
        # redis-py routes RESP3 "invalidate" pushes to this parser hook (its own client-side
        # cache uses the same one)
        feed._parser.set_invalidation_push_handler(self._on_push)
        feed.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self.prefix)
        if feed.read_response() not in (b"OK", "OK"):
            raise ValueError("Redis refused CLIENT TRACKING")
        with self._lock:
            self._flush()  # anything filled before the feed was up is suspect
            self._armed = True
        if self._announced_down:
            log.info("LLM near cache on again (Redis's invalidation feed is back)")
            self._announced_down = False
        next_ping = time.monotonic() + self.ping_every_s
        while not self._closed.is_set():
            if feed.can_read(timeout=min(1.0, self.ping_every_s)):
                feed.read_response(push_request=True)  # a push: _on_push applied it
            elif time.monotonic() >= next_ping:
                feed.send_command("PING")
                if feed.read_response() not in (b"PONG", "PONG"):
                    raise ValueError("the invalidation feed did not answer PING")
                next_ping = time.monotonic() + self.ping_every_s

    def _on_push(self, message: list[Any]) -> list[Any]:
        keys = message[1] if len(message) > 1 else None
        with self._lock:
            if keys is None:  # FLUSHDB / FLUSHALL, or the server's table overflowed
                self._flush()
            else:
                for key in keys:
                    self._invalidate(key.decode() if isinstance(key, bytes) else str(key))
        return message

    # -- under self._lock --------------------------------------------------------------------

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def _invalidate(self, key: str) -> None:
        self._seq += 1
        self._drop(key)
        self._invalidated[key] = self._seq
        if len(self._invalidated) > _INVALIDATED_KEEP:
            self._invalidated.clear()
            self._forgotten_up_to = self._seq

    def _flush(self) -> None:
        self._seq += 1
        self._flushed_at = self._seq
        self._entries.clear()
        self._bytes = 0
        self._invalidated.clear()
