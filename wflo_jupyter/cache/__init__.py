"""Redis LLM cache (keys, TTL, invalidation, namespaces, statistics), Redis locks
(owner tokens, auto-renewal, wait timeout) and single-flight across kernels.

The gateway's use, per LLM request::

    client = connect_redis(settings.redis_url)          # once per kernel
    cache = LlmCache(client)                            # once per kernel, thread-safe
    key = cache_key(provider=..., base_url=..., endpoint=..., body=body,
                    namespace=DEFAULT_NAMESPACE)
    response, was_leader = single_flight(
        cache, lambda name: RedisLock(client, name), key, call_provider, wait_s=...)
    if was_leader: cache.record_miss(key.namespace)
    else:          cache.record_hit(key.namespace, response.saved_micros)
"""

from wflo_jupyter.cache.keys import (
    ANSWER_HEADERS,
    DEFAULT_NAMESPACE,
    IGNORED_BODY_FIELDS,
    CacheKey,
    cache_key,
    canonical_json,
    request_digest,
)
from wflo_jupyter.cache.llm_cache import CachedResponse, LlmCache
from wflo_jupyter.cache.locks import FlightCache, LockTimeout, RedisLock, single_flight
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.core.reports import CacheStats

__all__ = [
    "ANSWER_HEADERS",
    "DEFAULT_NAMESPACE",
    "IGNORED_BODY_FIELDS",
    "CacheKey",
    "CacheStats",
    "CachedResponse",
    "FlightCache",
    "LlmCache",
    "LockTimeout",
    "RedisLock",
    "cache_key",
    "canonical_json",
    "connect_redis",
    "request_digest",
    "single_flight",
]
