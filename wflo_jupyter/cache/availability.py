"""``RedisAvailability``: whether the cache's Redis answered its last call.

Each change of state is logged once (the kernel log). With ``watch``, the notebook also
hears once when Redis goes and once when it is back (``OutageNotices``), and a Redis the
local stack started again at another address is followed (``repoint_redis``): LLM calls
are answered, budgeted and recorded all along, only not cached while it is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from wflo_jupyter.cache.redis_client import describe_redis, repoint_redis
from wflo_jupyter.core.outage import OutageNotices

log = logging.getLogger("wflo_jupyter.cache.llm_cache")  # the cache's records, as ever

UNCACHED = "LLM calls are answered, budgeted and recorded, but not cached, until it is back"
CACHED_AGAIN = "LLM calls are cached again"


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisAvailability:
    """Whether ``client``'s Redis answered the last call; says each change of state once."""

    def __init__(self, client: redis.Redis, retry_after_s: float) -> None:
        self._client = client
        self._where = describe_redis(client)
        self._retry_after_s = retry_after_s
        self._guard = threading.Lock()
        self._down = False
        self._next_probe_at = 0.0
        self._command_error_logged = False
        self._outages: OutageNotices | None = None
        self._readdress: Callable[[], str | None] | None = None

    def watch(
        self, notice: Callable[[str], None], readdress: Callable[[], str | None] | None
    ) -> None:
        """Say outages through ``notice``; follow ``readdress`` (see the module)."""
        self._outages = OutageNotices("Redis (the LLM cache)", "WFLO_REDIS_URL", notice)
        self._readdress = readdress

    @property
    def up(self) -> bool:
        return not self._down

    @property
    def down_since(self) -> float | None:
        return self._outages.down_since if self._outages is not None else None

    def may_call(self) -> bool:
        """False while Redis is known down and the next probe is not due yet."""
        return not self._down or time.monotonic() >= self._next_probe_at

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._guard:
            if not self._down:
                return
            self._down = False
        log.info("LLM cache back: Redis at %s answers again; caching resumed", self._where)
        if self._outages is not None:
            self._outages.back(self._where, CACHED_AGAIN)

    def unreachable(self, exc: BaseException) -> None:
        with self._guard:
            self._next_probe_at = time.monotonic() + self._retry_after_s
            first, self._down = not self._down, True
        if first:
            log.warning(
                "LLM cache off: Redis at %s unavailable (%s); "
                "LLM calls go uncached until it returns",
                self._where,
                one_line(exc),
            )
            if self._outages is not None:
                self._outages.down(self._where, UNCACHED)
        self._follow()

    def _follow(self) -> None:
        """Redis was started again elsewhere: point the client there, probe it at once."""
        try:
            url = self._readdress() if self._readdress is not None else None
            if url is None or not repoint_redis(self._client, url):
                return
        except Exception as exc:  # an unreadable stack file: stay where it was
            log.warning("LLM cache: where Redis runs now is unknown: %s", one_line(exc))
            return
        old, self._where = self._where, describe_redis(self._client)
        log.warning("LLM cache: Redis moved from %s to %s; following it", old, self._where)
        self._next_probe_at = 0.0

    def command_failed(self, exc: BaseException) -> None:
        with self._guard:
            if not self._command_error_logged:
                self._command_error_logged = True
                log.warning(
                    "LLM cache: Redis at %s refused a command (%s); further refusals are "
                    "logged at debug level",
                    self._where,
                    one_line(exc),
                )
                return
        log.debug("LLM cache: Redis refused a command: %s", one_line(exc))
