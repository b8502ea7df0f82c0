"""Redis locks (``RedisLock``) and single-flight (``single_flight``) across threads,
processes and kernels: every bit of coordination lives in Redis.

``RedisLock`` is the usual single-instance Redis lock, made safe:

* acquire is ``SET wflo:lock:{name} <token> NX PX <ttl>`` with a fresh random owner
  token per acquisition;
* release and extend are Lua scripts that act only if the key still holds our token
  (check-and-delete, check-and-pexpire), so a holder whose lock expired can never
  remove or prolong someone else's; release also PUBLISHes on
  ``wflo:lock:{name}:released`` so waiters wake at once instead of polling;
* while held, a daemon thread renews the TTL every ``ttl_s / 3``; a holder that dies
  stops renewing and the lock lapses after at most ``ttl_s``;
* ``acquire(wait_s)`` waits at most ``wait_s`` (on the release channel, re-checking
  every ``poll_s`` to notice expiry) and then raises ``LockTimeout`` (one line).

``single_flight`` makes concurrent identical computations run once: check the cache;
on a miss take the key's lock; the leader computes, stores, releases; followers wait
for the release notice and read the cache. If the leader fails (raises, or dies and
its lock lapses) the next follower to take the lock computes: one at a time, never a
stampede, never a deadlock. When Redis is unavailable it computes without
coordination, so callers keep working.

A ``RedisLock`` instance belongs to one holder at a time; make one per use (the
``lock_factory`` of ``single_flight``), not one shared between threads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol, Self, TypeVar

import redis
from redis.client import PubSub
from redis.exceptions import RedisError

from wflo_jupyter.cache.keys import CacheKey
from wflo_jupyter.core.errors import WfloError

log = logging.getLogger(__name__)

LOCK_KEY_PREFIX = "wflo:lock"
DEFAULT_LOCK_TTL_S = 10.0
DEFAULT_LOCK_WAIT_S = 30.0
DEFAULT_POLL_S = 0.2

_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], 'released')
  return 1
end
return 0
"""

_EXTEND_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

T = TypeVar("T")


class LockTimeout(WfloError):
    """A lock (or a single-flight result) was not obtained within the maximum wait."""


def _positive_seconds(what: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return value


class ReleaseWatch:
    """A subscription to one lock's release notices (see ``RedisLock.watch_release``)."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True if a release was announced meanwhile. May
        return early with False (e.g. on the subscription's confirmation)."""
        message = self._pubsub.get_message(timeout=max(0.0, timeout_s))
        return message is not None


class RedisLock:
    """A lock named ``name`` held in Redis key ``wflo:lock:{name}``."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        ttl_s: float = DEFAULT_LOCK_TTL_S,
        wait_s: float = DEFAULT_LOCK_WAIT_S,
        auto_renew: bool = True,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        if not name:
            raise ValueError("lock name is empty")
        self.client = client
        self.name = name
        self.key = f"{LOCK_KEY_PREFIX}:{name}"
        self.release_channel = f"{self.key}:released"
        self.ttl_s = _positive_seconds("lock TTL", ttl_s)
        self.wait_s = wait_s
        self.auto_renew = auto_renew
        self.poll_s = _positive_seconds("lock poll interval", poll_s)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._extend_script = client.register_script(_EXTEND_LUA)
        self._token: str | None = None
        self._lost = threading.Event()
        self._stop_renewal = threading.Event()
        self._renewal: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RedisLock({self.name!r}, held={self.held})"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    @property
    def held(self) -> bool:
        """This instance acquired the lock and has not seen it lost (no I/O)."""
        return self._token is not None and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        """The renewal found the lock expired or taken while this instance held it."""
        return self._lost.is_set()

    # ------------------------------------------------------------------ acquire

    def try_acquire(self) -> bool:
        """One attempt, no waiting. ``RedisError`` if Redis is unavailable."""
        if self._token is not None:
            raise RuntimeError(f"lock {self.name!r} is already held by this RedisLock")
        token = secrets.token_hex(16)
        if not self.client.set(self.key, token, nx=True, px=self._ttl_ms):
            return False
        self._token = token
        self._lost.clear()
        if self.auto_renew:
            self._start_renewal(token)
        return True

    def acquire(self, wait_s: float | None = None) -> None:
        """Take the lock, waiting at most ``wait_s`` (default: the instance's
        ``wait_s``); ``LockTimeout`` after that. ``RedisError`` if Redis is unavailable."""
        wait = self.wait_s if wait_s is None else wait_s
        if not (math.isfinite(wait) and wait >= 0):
            raise ValueError(f"lock wait must be >= 0 seconds, got {wait!r}")
        deadline = time.monotonic() + wait
        if self.try_acquire():
            return
        if wait > 0:
            with self.watch_release() as watch:
                while True:
                    if self.try_acquire():
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    watch.wait(min(remaining, self.poll_s))
        raise LockTimeout(f"lock {self.name!r} not acquired within {wait:g} s (held elsewhere)")

    @contextlib.contextmanager
    def watch_release(self) -> Iterator[ReleaseWatch]:
        """Subscribe to this lock's release notices for the ``with`` block. Subscribe
        before re-checking the lock, so no release between check and wait is missed."""
        pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.release_channel)
            yield ReleaseWatch(pubsub)
        finally:
            pubsub.close()

    # ------------------------------------------------------------------ hold / release

    def extend(self, ttl_s: float | None = None) -> bool:
        """Reset the TTL to ``ttl_s`` (default ``self.ttl_s``) if we still own the lock."""
        token = self._token
        if token is None:
            return False
        seconds = self.ttl_s if ttl_s is None else _positive_seconds("lock TTL", ttl_s)
        ttl_ms = max(1, round(seconds * 1000))
        return bool(self._extend_script(keys=[self.key], args=[token, ttl_ms]))

    def owned(self) -> bool:
        """Ask Redis whether the key still holds this instance's token."""
        token = self._token
        return token is not None and self.client.get(self.key) == token.encode()

    def release(self) -> bool:
        """Release if we still own the lock and wake its waiters; False when the lock
        was not ours any more (expired, or taken by another owner) or never held.
        ``RedisError`` if Redis is unavailable (the lock then lapses by its TTL)."""
        token = self._token
        if token is None:
            return False
        self._stop_renewing()
        self._token = None
        return bool(self._release_script(keys=[self.key], args=[token, self.release_channel]))

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            released = self.release()
        except RedisError as error:
            log.warning("lock %s: release failed (%s); it expires by its TTL", self.name, error)
            return
        if not released:
            log.warning("lock %s expired or was taken before release", self.name)

    # ------------------------------------------------------------------ renewal

    def _start_renewal(self, token: str) -> None:
        self._stop_renewal = threading.Event()
        stop = self._stop_renewal
        interval = self.ttl_s / 3

        def renew() -> None:
            while not stop.wait(interval):
                try:
                    still_ours = self._extend_script(keys=[self.key], args=[token, self._ttl_ms])
                except RedisError as exc:  # keep trying until the TTL decides
                    log.debug("lock %s: renewal failed: %s", self.name, exc)
                    continue
                if not still_ours:
                    self._lost.set()
                    log.warning("lock %s was lost while held (expired or taken)", self.name)
                    return

        self._renewal = threading.Thread(
            target=renew, name=f"wflo-lock-renew:{self.name}", daemon=True
        )
        self._renewal.start()

    def _stop_renewing(self) -> None:
        self._stop_renewal.set()
        thread, self._renewal = self._renewal, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class FlightCache(Protocol[T]):
    """What ``single_flight`` needs from a cache (``LlmCache`` is one)."""

    @property
    def available(self) -> bool: ...

    def get(self, key: CacheKey, /) -> T | None: ...

    def set(self, key: CacheKey, value: T, ttl_s: float | None = None, /) -> None: ...


def single_flight(
    cache: FlightCache[T],
    lock_factory: Callable[[str], RedisLock],
    key: CacheKey,
    compute: Callable[[], T],
    wait_s: float,
    *,
    ttl_s: float | None = None,
) -> tuple[T, bool]:
    """The cached value of ``key``, computing it at most once across all callers.

    Returns ``(value, was_leader)``: ``was_leader`` is True when this call ran
    ``compute`` (and stored its result with ``ttl_s``), False when the value came from
    the cache. ``compute`` raising propagates to this caller and lets one waiting
    caller take over. A follower that waits longer than ``wait_s`` for the leader gets
    ``LockTimeout``: pick ``wait_s`` above the longest ``compute``. ``lock_factory``
    builds a ``RedisLock`` from a lock name (``key.lock_name``).
    """
    if not (math.isfinite(wait_s) and wait_s >= 0):
        raise ValueError(f"single-flight wait must be >= 0 seconds, got {wait_s!r}")
    if ttl_s is not None:
        _positive_seconds("cache TTL", ttl_s)
    cached = cache.get(key)
    if cached is not None:
        return cached, False
    if not cache.available:
        return _compute_and_store(cache, key, compute, ttl_s), True

    lock = lock_factory(key.lock_name)
    try:
        followed = _lead_or_follow(cache, lock, key, time.monotonic() + wait_s, wait_s)
    except RedisError as exc:
        log.debug("single-flight %s: Redis unavailable (%s); computing alone", key.digest, exc)
        _release_quietly(lock, key)
        return _compute_and_store(cache, key, compute, ttl_s), True
    if followed is not None:
        return followed, False

    try:
        cached = cache.get(key)  # a leader that finished between our miss and our lock
        if cached is not None:
            return cached, False
        return _compute_and_store(cache, key, compute, ttl_s), True
    finally:
        _release_quietly(lock, key)


def _release_quietly(lock: RedisLock, key: CacheKey) -> None:
    """Release ``lock`` if this caller holds it; a Redis failure only lets it lapse."""
    try:
        lock.release()
    except RedisError as exc:
        log.debug("single-flight %s: release failed (%s); the lock lapses", key.digest, exc)


def _compute_and_store(
    cache: FlightCache[T], key: CacheKey, compute: Callable[[], T], ttl_s: float | None
) -> T:
    value = compute()
    cache.set(key, value, ttl_s)
    return value


def _lead_or_follow(
    cache: FlightCache[T], lock: RedisLock, key: CacheKey, deadline: float, wait_s: float
) -> T | None:
    """None once ``lock`` is ours (we lead); the cached value once a leader stored it."""
    if lock.try_acquire():
        return None
    with lock.watch_release() as watch:
        while not lock.try_acquire():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    f"single-flight: {key.model} request {key.digest[:12]} still being "
                    f"computed elsewhere after {wait_s:g} s"
                )
            watch.wait(min(remaining, lock.poll_s))
            cached = cache.get(key)
            if cached is not None:
                return cached
    return None
