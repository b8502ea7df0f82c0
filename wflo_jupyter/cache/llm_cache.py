"""``LlmCache``: provider answers in Redis, keyed by ``CacheKey``, with TTLs,
invalidation, hit/miss/saving statistics, and graceful behaviour when Redis is down.

Owns the stored form of an answer (``CachedResponse``, JSON only, never pickle), the
statistics hash per namespace (``HINCRBY``, so every kernel adds to the same counts),
the in-process copies of entries it read (a ``NearCache`` kept coherent by Redis's
invalidation pushes: a repeated hit costs no round trip), and the cache's
availability: a failing Redis never raises to callers. ``get`` returns
``None``, ``set`` and ``record_*`` do nothing, invalidation returns 0, and one
one-line warning is logged when Redis goes away; while it is away Redis is probed at
most every ``retry_after_s`` (other calls return at once), and the first call that
succeeds again logs one "cache back" line. Safe to share between threads (one
instance per kernel; the redis-py client pools connections).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wflo_jupyter.cache.availability import RedisAvailability
from wflo_jupyter.cache.availability import one_line as _one_line
from wflo_jupyter.cache.keys import (
    KEY_PREFIX,
    CacheKey,
    all_entries_pattern,
    all_stats_pattern,
    model_pattern,
    namespace_pattern,
    origin_key,
    stats_key,
)
from wflo_jupyter.cache.near import NearCache
from wflo_jupyter.core.reports import CacheStats

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_RETRY_AFTER_S = 1.0
STORED_FORMAT_VERSION = 1
_SCAN_BATCH = 500

R = TypeVar("R")


@dataclass(frozen=True)
class CachedResponse:
    """One stored provider answer.

    ``body`` is the provider's JSON response body, ``usage`` the normalised usage of
    the call that produced it, ``saved_micros`` what that call cost (so what every hit
    saves), ``model`` the model that answered.
    """

    body: dict[str, Any]
    usage: dict[str, Any]
    saved_micros: int
    model: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> str:
        """The stored form. ``TypeError``/``ValueError`` when body or usage is not JSON."""
        return json.dumps(
            {
                "v": STORED_FORMAT_VERSION,
                "model": self.model,
                "created_at": self.created_at.isoformat(),
                "saved_micros": self.saved_micros,
                "usage": self.usage,
                "body": self.body,
            },
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CachedResponse:
        """Parse the stored form; ``ValueError`` (one line) when it is not one."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"cached response is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != STORED_FORMAT_VERSION:
            raise ValueError("cached response has an unknown format")
        body, usage = data.get("body"), data.get("usage")
        saved, model = data.get("saved_micros"), data.get("model")
        if not (
            isinstance(body, dict)
            and isinstance(usage, dict)
            and isinstance(saved, int)
            and not isinstance(saved, bool)
            and isinstance(model, str)
        ):
            raise ValueError("cached response is missing fields")
        try:
            created_at = datetime.fromisoformat(str(data.get("created_at")))
        except ValueError:
            raise ValueError("cached response has no valid created_at") from None
        return cls(body=body, usage=usage, saved_micros=saved, model=model, created_at=created_at)


def _check_ttl(ttl_s: float) -> int:
    """TTL seconds -> milliseconds; ``ValueError`` unless positive and finite."""
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"cache TTL must be a positive number of seconds, got {ttl_s!r}")
    return max(1, round(ttl_s * 1000))


def _int_field(values: Mapping[bytes | str, bytes | str], name: str) -> int:
    raw = values.get(name.encode())
    return int(raw) if raw is not None else 0


class LlmCache:
    """The Redis LLM cache. Built with a (sync, thread-safe) ``redis.Redis`` client the
    caller owns; see ``connect_redis`` for one with suitable timeouts. ``near_cache``
    keeps the entries this process reads in memory, coherent through Redis's
    invalidation pushes (``NearCache``); ``close()`` stops its feed."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        default_ttl_s: float = DEFAULT_TTL_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        near_cache: bool = True,
    ) -> None:
        _check_ttl(default_ttl_s)
        self.client = client
        self.default_ttl_s = default_ttl_s
        self._availability = RedisAvailability(client, retry_after_s)
        self.near: NearCache[CachedResponse] | None = (
            NearCache(client, f"{KEY_PREFIX}:", retry_after_s=retry_after_s) if near_cache else None
        )

    def close(self) -> None:
        """Stop the near cache's feed (the Redis client stays the caller's)."""
        if self.near is not None:
            self.near.close()

    # ------------------------------------------------------------------ availability

    def watch_outages(
        self, notice: Callable[[str], None], readdress: Callable[[], str | None] | None
    ) -> None:
        """Tell the notebook (``notice``) once when Redis goes and once when it is back;
        ``readdress``: where the local stack runs it now, followed when it moved."""
        self._availability.watch(notice, readdress)

    @property
    def down_since(self) -> float | None:
        """When this cache found Redis unreachable (``time.time()``), None while it answers."""
        return self._availability.down_since

    @property
    def available(self) -> bool:
        """False from the first failed call until a call succeeds again (no I/O)."""
        return self._availability.up

    def ping(self) -> bool:
        """Ask Redis now (ignoring the probe interval); updates ``available``."""
        try:
            self.client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._availability.unreachable(exc)
            return False
        except RedisError as exc:
            self._availability.command_failed(exc)
            return False
        self._availability.succeeded()
        return True

    def _call(self, fallback: R, action: Callable[[], R]) -> R:
        """Run ``action`` against Redis; on any Redis failure return ``fallback``."""
        if not self._availability.may_call():
            return fallback
        try:
            result = action()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._availability.unreachable(exc)
            return fallback
        except RedisError as exc:
            self._availability.succeeded()
            self._availability.command_failed(exc)
            return fallback
        self._availability.succeeded()
        return result

    # ------------------------------------------------------------------ entries

    def get(self, key: CacheKey) -> CachedResponse | None:
        """The stored answer for ``key``, or ``None`` (miss, or Redis unavailable). From
        memory when this process read it before and Redis has not changed it since."""
        near = self.near
        if near is not None:
            remembered = near.get(key.redis_key)
            if remembered is not None:
                return remembered
            if near.armed:
                return self._read_and_remember(key, near)
        raw = self._call(None, lambda: self.client.get(key.redis_key))
        return None if raw is None else _parsed(key, raw)

    def _read_and_remember(
        self, key: CacheKey, near: NearCache[CachedResponse]
    ) -> CachedResponse | None:
        """GET and PTTL in one round trip; the answer is remembered unless Redis changed
        the key meanwhile (see ``NearCache.fill``)."""
        token = near.fill_token()
        started = time.monotonic()

        def get_with_ttl() -> tuple[bytes | None, int]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(key.redis_key)
            pipe.pttl(key.redis_key)
            raw, remaining_ms = pipe.execute()
            return raw, int(remaining_ms)

        missing: tuple[bytes | None, int] = (None, -2)
        raw, remaining_ms = self._call(missing, get_with_ttl)
        if raw is None:
            return None
        value = _parsed(key, raw)
        if value is not None and remaining_ms != -2:  # -2: gone between GET and PTTL
            ttl_s = remaining_ms / 1000 if remaining_ms >= 0 else None
            near.fill(key.redis_key, value, len(raw), ttl_s, token, read_started=started)
        return value

    def set(self, key: CacheKey, response: CachedResponse, ttl_s: float | None = None) -> None:
        """Store ``response`` under ``key`` for ``ttl_s`` seconds (default
        ``default_ttl_s``). Does nothing when Redis is unavailable; ``ValueError``
        only for a TTL that is not a positive number."""
        ttl_ms = _check_ttl(self.default_ttl_s if ttl_s is None else ttl_s)
        try:
            payload = response.to_json()
        except (TypeError, ValueError) as exc:
            log.warning("LLM cache: not storing %s: %s", key.redis_key, _one_line(exc))
            return
        self._call(None, lambda: self.client.set(key.redis_key, payload, px=ttl_ms))
        self._forget(key.redis_key)

    def note_origin(self, key: CacheKey, origin: str, ttl_s: float | None = None) -> None:
        """Remember that ``origin`` (a notebook) stored ``key``, for ``invalidate_origin``.
        The record lives at least as long as an entry stored with the default TTL."""
        ttl_ms = max(
            _check_ttl(self.default_ttl_s if ttl_s is None else ttl_s),
            _check_ttl(self.default_ttl_s),
        )

        def note() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(origin_key(origin), key.redis_key)
            pipe.pexpire(origin_key(origin), ttl_ms)
            pipe.execute()

        self._call(None, note)

    def invalidate_origin(self, origin: str) -> int:
        """Delete every entry ``origin`` (a notebook) stored; the number deleted (entries
        that had already expired are not counted)."""

        def delete() -> int:
            names = list(self.client.smembers(origin_key(origin)))
            deleted = 0
            for start in range(0, len(names), _SCAN_BATCH):
                deleted += int(self.client.unlink(*names[start : start + _SCAN_BATCH]))
            self.client.unlink(origin_key(origin))
            return deleted

        try:
            return self._call(0, delete)
        finally:
            self._forget()

    def ttl_s(self, key: CacheKey) -> float | None:
        """Seconds ``key`` still lives, or ``None`` when absent (or Redis unavailable)."""
        remaining_ms: int = self._call(-2, lambda: self.client.pttl(key.redis_key))
        return remaining_ms / 1000 if remaining_ms >= 0 else None

    # ------------------------------------------------------------------ invalidation

    def invalidate_key(self, key: CacheKey | str) -> bool:
        """Drop one entry (a ``CacheKey`` or its Redis key text); True if it existed.
        ``ValueError`` for text that is not an LLM cache key."""
        redis_key = key.redis_key if isinstance(key, CacheKey) else CacheKey.parse(key).redis_key
        deleted: int = self._call(0, lambda: self.client.delete(redis_key))
        self._forget(redis_key)
        return deleted > 0

    def invalidate_model(self, model: str, namespace: str | None = None) -> int:
        """Drop every entry of ``model`` (in ``namespace``, or in all); returns how many."""

        def belongs(cache_key: CacheKey) -> bool:
            return cache_key.model == model and namespace in (None, cache_key.namespace)

        return self._delete_matching(model_pattern(model, namespace), belongs)

    def invalidate_namespace(self, namespace: str) -> int:
        """Drop every entry of ``namespace`` (a notebook's, or the shared one)."""
        return self._delete_matching(
            namespace_pattern(namespace), lambda cache_key: cache_key.namespace == namespace
        )

    def invalidate_all(self) -> int:
        """Drop every LLM cache entry (only ``wflo:llm:*`` keys; statistics stay)."""
        return self._delete_matching(all_entries_pattern(), lambda cache_key: True)

    def _delete_matching(self, pattern: str, belongs: Callable[[CacheKey], bool]) -> int:
        def delete() -> int:
            deleted = 0
            batch: list[bytes] = []
            for raw in self.client.scan_iter(match=pattern, count=_SCAN_BATCH):
                if _parse_entry_key(raw, belongs):
                    batch.append(raw)
                if len(batch) >= _SCAN_BATCH:
                    deleted += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(self.client.unlink(*batch))
            return deleted

        try:
            return self._call(0, delete)
        finally:
            self._forget()

    def _forget(self, redis_key: str | None = None) -> None:
        """This process changed ``redis_key`` (None: many keys): drop its copies now,
        without waiting for Redis's invalidation push."""
        if self.near is not None:
            if redis_key is None:
                self.near.forget_all()
            else:
                self.near.forget(redis_key)

    # ------------------------------------------------------------------ statistics

    def record_hit(self, namespace: str, saved_micros: int, *, hits: int = 1) -> None:
        """Count ``hits`` hits in ``namespace`` that saved ``saved_micros`` in all."""

        def record() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(stats_key(namespace), "hits", hits)
            pipe.hincrby(stats_key(namespace), "saved_micros", saved_micros)
            pipe.execute()

        self._call(None, record)

    def record_miss(self, namespace: str) -> None:
        """Count one miss in ``namespace``."""
        self._call(None, lambda: self.client.hincrby(stats_key(namespace), "misses", 1))

    def stats(self, namespace: str | None = None) -> CacheStats:
        """Hits, misses, saved micros and live entries of ``namespace`` (or of all
        namespaces). All zero when Redis is unavailable (check ``available``)."""

        def read() -> CacheStats:
            if namespace is None:
                stats_keys = list(self.client.scan_iter(match=all_stats_pattern(), count=100))
                entries_pattern = all_entries_pattern()
            else:
                stats_keys = [stats_key(namespace).encode()]
                entries_pattern = namespace_pattern(namespace)
            hits = misses = saved = 0
            for name in stats_keys:
                values = self.client.hgetall(name)
                hits += _int_field(values, "hits")
                misses += _int_field(values, "misses")
                saved += _int_field(values, "saved_micros")
            entries = sum(
                1 for _ in self.client.scan_iter(match=entries_pattern, count=_SCAN_BATCH)
            )
            return CacheStats(hits=hits, misses=misses, saved_micros=saved, entries=entries)

        return self._call(CacheStats(0, 0, 0, 0), read)

    def reset_stats(self, namespace: str | None = None) -> None:
        """Zero the counters of ``namespace`` (or of every namespace)."""

        def reset() -> None:
            if namespace is not None:
                self.client.delete(stats_key(namespace))
                return
            names = list(self.client.scan_iter(match=all_stats_pattern(), count=100))
            if names:
                self.client.unlink(*names)

        self._call(None, reset)


def _parsed(key: CacheKey, raw: bytes | str) -> CachedResponse | None:
    """A stored entry, or None (logged at debug level) when it cannot be read."""
    try:
        return CachedResponse.from_json(raw)
    except ValueError as exc:
        log.debug("LLM cache: ignoring unreadable entry %s: %s", key.redis_key, exc)
        return None


def _parse_entry_key(raw: bytes, belongs: Callable[[CacheKey], bool]) -> bool:
    """True if ``raw`` is a well-formed entry key that ``belongs`` accepts."""
    try:
        return belongs(CacheKey.parse(raw.decode()))
    except (UnicodeDecodeError, ValueError):
        return False
