"""The cache room against real Redis: LLM cache, distributed locks, single-flight,
and Redis going away and coming back.

Covers the older project's "LLM cache", "Distributed locks" and "Redis operations"
rows in spirit. The shared Redis is used by other runs too: every test works in its
own namespace / lock name / model names and deletes its keys; ``invalidate_all`` and
the outage tests run against a private redis-server started here.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import PrivateRedis, wait_until
from wflo_jupyter.cache import (
    CachedResponse,
    CacheKey,
    CacheStats,
    LlmCache,
    LockTimeout,
    RedisLock,
    cache_key,
    connect_redis,
    single_flight,
)
from wflo_jupyter.cache.keys import stats_key

pytestmark = [pytest.mark.integration, pytest.mark.redis]

CACHE_LOG = "wflo_jupyter.cache.llm_cache"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _request(model: str = "gpt-4o-mini", prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 50,
        **extra,
    }


def _key(namespace: str, body: dict[str, Any]) -> CacheKey:
    return cache_key(
        provider="openai",
        base_url="https://api.openai.com/v1",
        endpoint="/chat/completions",
        body=body,
        namespace=namespace,
    )


def _response(
    model: str = "gpt-4o-mini", text: str = "hi there", saved: int = 123
) -> CachedResponse:
    return CachedResponse(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        },
        usage={"input_tokens": 9, "output_tokens": 3},
        saved_micros=saved,
        model=model,
        created_at=datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
    )


def _delete_pattern(client: redis.Redis, pattern: str) -> None:
    names = list(client.scan_iter(match=pattern, count=500))
    if names:
        client.unlink(*names)


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect_redis(redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace(client: redis.Redis) -> Iterator[str]:
    """A namespace of this test's own; its entries and statistics are removed after."""
    name = _unique("t")
    yield name
    _delete_pattern(client, f"wflo:llm:{name}:*")
    client.delete(stats_key(name))


@pytest.fixture
def cache(client: redis.Redis) -> Iterator[LlmCache]:
    cache = LlmCache(client)
    yield cache
    cache.close()


@pytest.fixture
def scratch(client: redis.Redis) -> Iterator[str]:
    """A unique prefix for lock names and plain keys; everything under it is removed."""
    prefix = _unique("t")
    yield prefix
    _delete_pattern(client, f"*{prefix}*")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# -- LLM cache -------------------------------------------------------------------------
def test_set_and_get_round_trip(cache: LlmCache, namespace: str) -> None:
    key = _key(namespace, _request())
    assert cache.get(key) is None
    stored = _response()
    cache.set(key, stored)
    assert cache.get(key) == stored
    # the same request with its fields in another order is the same entry
    reordered = dict(reversed(list(_request().items())))
    assert cache.get(_key(namespace, reordered)) == stored


def test_stream_flag_shares_the_entry_and_answer_fields_do_not(
    cache: LlmCache, namespace: str
) -> None:
    cache.set(_key(namespace, _request(stream=True)), _response(text="streamed once"))
    hit = cache.get(_key(namespace, _request(stream=False)))
    assert hit is not None and hit.body["choices"][0]["message"]["content"] == "streamed once"
    assert cache.get(_key(namespace, _request(temperature=0.5))) is None
    assert cache.get(_key(namespace, _request(prompt="hello!"))) is None
    assert cache.get(_key(namespace, _request(seed=7))) is None


def test_entry_expires_after_its_ttl_in_real_time(client: redis.Redis, namespace: str) -> None:
    cache = LlmCache(client, default_ttl_s=1.0)
    key = _key(namespace, _request())
    cache.set(key, _response())
    remaining = cache.ttl_s(key)
    assert remaining is not None and 0.5 < remaining <= 1.0
    assert cache.get(key) is not None
    wait_until(lambda: cache.get(key) is None, 10, what="the entry to expire")
    assert cache.ttl_s(key) is None


def test_per_call_ttl_overrides_the_default(cache: LlmCache, namespace: str) -> None:
    short, long = _key(namespace, _request(prompt="a")), _key(namespace, _request(prompt="b"))
    cache.set(short, _response(), ttl_s=0.3)
    cache.set(long, _response())
    long_ttl, short_ttl = cache.ttl_s(long), cache.ttl_s(short)
    assert long_ttl is not None and long_ttl > 24 * 3600 - 5
    assert short_ttl is not None and short_ttl <= 0.3
    wait_until(lambda: cache.get(short) is None, 10, what="the short-lived entry to expire")
    assert cache.get(long) is not None
    with pytest.raises(ValueError, match="positive number of seconds"):
        cache.set(long, _response(), ttl_s=0)


def test_several_models_are_kept_apart(cache: LlmCache, namespace: str) -> None:
    models = ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "llama3:8b"]
    keys = {model: _key(namespace, _request(model=model)) for model in models}
    assert len({key.redis_key for key in keys.values()}) == len(models)
    for model, key in keys.items():
        cache.set(key, _response(model=model, text=f"answer of {model}"))
    for model, key in keys.items():
        hit = cache.get(key)
        assert hit is not None and hit.model == model
        assert hit.body["choices"][0]["message"]["content"] == f"answer of {model}"


def test_invalidate_by_key(cache: LlmCache, namespace: str) -> None:
    first, second = _key(namespace, _request(prompt="1")), _key(namespace, _request(prompt="2"))
    cache.set(first, _response())
    cache.set(second, _response())
    assert cache.invalidate_key(first) is True
    assert cache.invalidate_key(first) is False
    assert cache.invalidate_key(second.redis_key) is True  # the text form, as typed by users
    assert cache.get(first) is None and cache.get(second) is None
    with pytest.raises(ValueError, match="not an LLM cache key"):
        cache.invalidate_key("session:42")


def test_invalidate_by_model_in_one_or_all_namespaces(
    cache: LlmCache, client: redis.Redis, namespace: str
) -> None:
    other_namespace = _unique("t")
    model, keep_model = _unique("gpt-test"), _unique("claude-test")
    try:
        target = [_key(namespace, _request(model=model, prompt=str(i))) for i in range(3)]
        elsewhere = _key(other_namespace, _request(model=model))
        kept = _key(namespace, _request(model=keep_model))
        for key in [*target, elsewhere, kept]:
            cache.set(key, _response(model=key.model))
        assert cache.invalidate_model(model, namespace=namespace) == 3
        assert all(cache.get(key) is None for key in target)
        assert cache.get(elsewhere) is not None and cache.get(kept) is not None
        assert cache.invalidate_model(model) == 1  # every namespace
        assert cache.get(elsewhere) is None and cache.get(kept) is not None
    finally:
        _delete_pattern(client, f"wflo:llm:{other_namespace}:*")


def test_invalidate_by_namespace_leaves_others_alone(
    cache: LlmCache, client: redis.Redis, namespace: str, scratch: str
) -> None:
    other_namespace = _unique("t")
    bystander = f"{scratch}:not-a-cache-key"
    try:
        client.set(bystander, "keep me")
        mine = [_key(namespace, _request(prompt=str(i))) for i in range(5)]
        theirs = _key(other_namespace, _request())
        for key in [*mine, theirs]:
            cache.set(key, _response())
        assert cache.invalidate_namespace(namespace) == 5
        assert cache.stats(namespace).entries == 0
        assert cache.get(theirs) is not None
        assert client.get(bystander) == b"keep me"
    finally:
        _delete_pattern(client, f"wflo:llm:{other_namespace}:*")


def test_invalidate_all_touches_only_llm_entries(private_redis: PrivateRedis) -> None:
    client = connect_redis(private_redis.url)
    try:
        cache = LlmCache(client)
        entries = [_key(ns, _request(prompt=str(i))) for ns in ("a", "b") for i in range(3)]
        for key in entries:
            cache.set(key, _response())
        cache.record_hit("a", 10)
        bystanders = {"user:1": b"x", "wflo:llmx": b"y", "wflo:lock:other": b"z", "llm:1": b"w"}
        for name, value in bystanders.items():
            client.set(name, value)
        assert cache.invalidate_all() == len(entries)
        assert cache.stats() == CacheStats(hits=1, misses=0, saved_micros=10, entries=0)
        assert {name: client.get(name) for name in bystanders} == bystanders
    finally:
        client.close()


def test_stats_count_hits_misses_and_savings_across_instances(
    client: redis.Redis, redis_url: str, namespace: str
) -> None:
    kernel_a = LlmCache(client)
    other_client = connect_redis(redis_url)
    try:
        kernel_b = LlmCache(other_client)  # another kernel, same Redis
        for prompt in ("1", "2"):
            kernel_a.set(_key(namespace, _request(prompt=prompt)), _response())
        kernel_a.record_miss(namespace)
        kernel_b.record_miss(namespace)
        kernel_a.record_hit(namespace, 1_500)
        kernel_b.record_hit(namespace, 2_500)
        kernel_b.record_hit(namespace, 0)
        stats = kernel_b.stats(namespace)
        assert (stats.hits, stats.misses, stats.saved_micros, stats.entries) == (3, 2, 4_000, 2)
        everywhere = kernel_a.stats()  # other runs may add to the totals, never subtract
        assert everywhere.hits >= 3 and everywhere.saved_micros >= 4_000
        kernel_a.reset_stats(namespace)
        assert kernel_a.stats(namespace).hits == 0
        assert kernel_a.stats(namespace).entries == 2  # resetting counters keeps entries
    finally:
        other_client.close()


def test_unreadable_entries_are_misses_and_unstorable_answers_are_skipped(
    cache: LlmCache, client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key(namespace, _request())
    client.set(key.redis_key, b"\x80 not json")
    assert cache.get(key) is None
    client.set(key.redis_key, json.dumps({"v": 99}))
    assert cache.get(key) is None
    caplog.set_level(logging.WARNING, logger=CACHE_LOG)
    unstorable = CachedResponse(body={"x": object()}, usage={}, saved_micros=1, model="m")
    other = _key(namespace, _request(prompt="other"))
    cache.set(other, unstorable)
    assert cache.get(other) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"LLM cache: not storing {other.redis_key}: "
        "TypeError: Object of type object is not JSON serializable"
    ]


# -- Redis operations ------------------------------------------------------------------
def test_set_and_get_from_many_threads(cache: LlmCache, namespace: str) -> None:
    errors: list[str] = []

    def worker(worker_id: int) -> None:
        for i in range(25):
            key = _key(namespace, _request(prompt=f"{worker_id}-{i}"))
            cache.set(key, _response(text=f"{worker_id}-{i}"))
            hit = cache.get(key)
            if hit is None or hit.body["choices"][0]["message"]["content"] != f"{worker_id}-{i}":
                errors.append(f"{worker_id}-{i}: {hit}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.stats(namespace).entries == 200


def test_lock_acquisition_under_load(client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:load"
    holders, most_holders, acquisitions = [0], [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            with RedisLock(client, name, ttl_s=5, wait_s=20):
                with guard:
                    holders[0] += 1
                    most_holders[0] = max(most_holders[0], holders[0])
                    acquisitions[0] += 1
                time.sleep(0.001)
                with guard:
                    holders[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert acquisitions[0] == 200
    assert most_holders[0] == 1
    assert client.exists(f"wflo:lock:{name}") == 0


def test_clients_close_cleanly(client: redis.Redis, redis_url: str, scratch: str) -> None:
    """The cache and locks own no event loop and leave no thread, socket or server-side
    connection behind (the older suite's async clients died with "Event loop is
    closed"). Run with ``-W error``: an unclosed socket would fail the test."""
    threads_before = threading.active_count()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for round_number in range(3):
            name = f"{scratch}-{round_number}"
            kernel = connect_redis(redis_url, client_name=name)
            cache = LlmCache(kernel)
            key = _key(name, _request())
            cache.set(key, _response())
            assert cache.get(key) is not None
            cache.invalidate_key(key)
            holder, waiter = RedisLock(kernel, f"{name}:lock"), RedisLock(kernel, f"{name}:lock")
            with holder, pytest.raises(LockTimeout):  # the wait opens and closes a pub/sub
                waiter.acquire(wait_s=0.05)
            assert _connections_named(client, name) >= 1
            assert cache.near is not None and cache.near.wait_armed(30)
            assert _connections_named(client, f"{name}-invalidations") == 1
            cache.close()
            kernel.close()
            names = (name, f"{name}-invalidations")
            wait_until(  # Redis drops a closed client's connections when it reads the FIN
                lambda names=names: sum(_connections_named(client, n) for n in names) == 0,
                10,
                what=f"Redis to drop the connections named {names}",
            )
            del kernel, cache
            gc.collect()
    assert threading.active_count() == threads_before


def _connections_named(client: redis.Redis, name: str) -> int:
    return sum(1 for entry in client.client_list() if entry.get("name") == name)


# -- Redis unavailable -----------------------------------------------------------------
def test_unreachable_redis_never_raises_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=CACHE_LOG)
    client = connect_redis("redis://127.0.0.1:1/0")
    try:
        cache = LlmCache(client, retry_after_s=0.05)
        key = _key("t-down", _request())
        slowest = 0.0
        # Not a wait: every call is exercised across several probe intervals (0.05 s
        # each), and none of them may raise or log a second warning.
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            started = time.monotonic()
            assert cache.get(key) is None
            cache.set(key, _response())
            cache.record_hit("t-down", 5)
            cache.record_miss("t-down")
            assert cache.invalidate_model("gpt-4o-mini") == 0
            assert cache.invalidate_all() == 0
            assert cache.stats().hits == 0
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
        assert cache.available is False
        assert slowest < 1.0  # a round of seven calls never waits on Redis (0.5 s timeouts)
        value, was_leader = single_flight(
            cache, lambda name: RedisLock(client, name), key, _response, wait_s=1
        )
        assert was_leader is True and value == _response()
    finally:
        client.close()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(messages) == 1
    level, text = messages[0]
    assert level == "WARNING" and "\n" not in text
    assert text.startswith("LLM cache off: Redis at 127.0.0.1:1/0 unavailable (ConnectionError")


def test_redis_stopped_midway_then_back(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CACHE_LOG)
    client = connect_redis(private_redis.url)
    try:
        cache = LlmCache(client, retry_after_s=0.2)
        before, during, after = (_key("nb", _request(prompt=p)) for p in ("1", "2", "3"))
        cache.set(before, _response())
        assert cache.get(before) is not None and cache.available

        private_redis.stop()
        for _ in range(20):
            assert cache.get(before) is None
            cache.set(during, _response())
            value, was_leader = single_flight(
                cache, lambda name: RedisLock(client, name), during, _response, wait_s=1
            )
            assert was_leader is True and value == _response()
        assert cache.available is False
        assert [r.levelname for r in caplog.records] == ["WARNING"]

        private_redis.start()  # same port, empty (the server keeps no data)

        def stored_again() -> bool:  # a write goes through once the next probe is due
            cache.set(after, _response())
            return cache.get(after) is not None

        wait_until(stored_again, 30, interval=0.05, what="the cache to use Redis again")
        assert cache.available is True
        assert cache.get(after) == _response()
        levels = [r.levelname for r in caplog.records]
        assert levels == ["WARNING", "INFO"]
        assert caplog.records[1].getMessage() == (
            f"LLM cache back: Redis at 127.0.0.1:{private_redis.port}/0 answers again; "
            "caching resumed"
        )
    finally:
        client.close()


# -- locks -----------------------------------------------------------------------------
def test_lock_acquire_and_release(client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:basic"
    first, second = RedisLock(client, name), RedisLock(client, name)
    first.acquire(wait_s=0)
    assert first.held and first.owned()
    assert client.pttl(first.key) > 0
    assert second.try_acquire() is False
    assert first.release() is True
    assert not first.held and client.exists(first.key) == 0
    assert first.release() is False
    assert second.try_acquire() is True
    with pytest.raises(RuntimeError, match="already held"):
        second.try_acquire()
    assert second.release() is True


def test_release_by_a_non_owner_is_refused(client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:owner"
    owner = RedisLock(client, name, ttl_s=0.3, auto_renew=False)
    stranger = RedisLock(client, name)
    owner.acquire()
    assert stranger.release() is False  # never acquired: nothing to release
    assert owner.owned()
    # the owner's lock lapses and someone else takes it
    wait_until(stranger.try_acquire, 10, what="the owner's lock to lapse")
    assert owner.release() is False  # token mismatch: the Lua check refuses
    assert owner.extend() is False
    assert stranger.owned()
    assert stranger.release() is True


def test_auto_renewal_keeps_a_lock_past_its_ttl(client: redis.Redis, scratch: str) -> None:
    renewed = RedisLock(client, f"{scratch}:renewed", ttl_s=0.45)
    unrenewed = RedisLock(client, f"{scratch}:unrenewed", ttl_s=0.45, auto_renew=False)
    renewed.acquire()
    unrenewed.acquire()
    # Two TTLs pass, timed by unrenewed locks (taken after ``renewed``) lapsing in turn.
    wait_until(lambda: not unrenewed.owned(), 10, what="the unrenewed lock to lapse")
    witness = RedisLock(client, f"{scratch}:witness", ttl_s=0.45, auto_renew=False)
    witness.acquire()
    wait_until(lambda: not witness.owned(), 10, what="a second TTL to pass")
    assert renewed.owned() and renewed.held
    assert RedisLock(client, renewed.name).try_acquire() is False
    assert not unrenewed.owned()
    assert renewed.release() is True
    assert unrenewed.release() is False


def test_concurrent_access_is_prevented(client: redis.Redis, scratch: str) -> None:
    counter = f"{scratch}:counter"
    client.set(counter, 0)

    def increment_five_times() -> None:
        for _ in range(5):
            with RedisLock(client, f"{scratch}:counter-lock", wait_s=20):
                value = int(client.get(counter) or 0)  # read ...
                time.sleep(0.005)  # ... think (a lost update would happen here) ...
                client.set(counter, value + 1)  # ... write

    threads = [threading.Thread(target=increment_five_times) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert int(client.get(counter) or 0) == 40


def test_wait_timeout_raises_lock_timeout_within_bound(client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:busy"
    with RedisLock(client, name):
        waiter = RedisLock(client, name)
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            waiter.acquire(wait_s=0.3)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 5.0  # the 0.3 s asked for, not the default 30 s
        assert str(raised.value) == f"lock '{name}' not acquired within 0.3 s (held elsewhere)"
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            waiter.acquire(wait_s=0)
        assert time.monotonic() - started < 5.0  # one attempt, not the default 30 s wait
        assert not waiter.held


def test_a_waiter_wakes_on_release_without_polling(client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:wake"
    holder = RedisLock(client, name)
    holder.acquire()
    waiter = RedisLock(client, name, poll_s=10)  # only the release notice can wake it soon
    acquired_at: list[float] = []

    def wait_for_it() -> None:
        waiter.acquire(wait_s=30)
        acquired_at.append(time.monotonic())

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    wait_until(  # the waiter listens for the release notice
        lambda: dict(client.pubsub_numsub(waiter.release_channel)).get(
            waiter.release_channel.encode()
        ),
        10,
        what="the waiter to subscribe to the release channel",
    )
    released_at = time.monotonic()
    holder.release()
    thread.join(timeout=60)
    assert acquired_at and acquired_at[0] - released_at < 5.0  # not the 10 s poll
    assert waiter.release() is True


_HOLD_UNTIL_KILLED = """
import sys, time
from wflo_jupyter.cache import RedisLock, connect_redis
lock = RedisLock(connect_redis(sys.argv[1]), sys.argv[2], ttl_s=1.0)
lock.acquire(wait_s=5)
print("held", flush=True)
time.sleep(60)
"""


def test_a_dead_holders_lock_expires(redis_url: str, client: redis.Redis, scratch: str) -> None:
    name = f"{scratch}:dead"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_UNTIL_KILLED, redis_url, name],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            contender = RedisLock(client, name)
            # A bounded negative check: alive and renewing, it holds the lock past its 1 s TTL.
            with pytest.raises(LockTimeout):
                contender.acquire(wait_s=1.2)
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            # Nobody renews it now: it lapses within one TTL of the kill ...
            assert client.pttl(contender.key) <= 1000
            contender.acquire(wait_s=30)  # ... and the contender gets it then
            assert contender.release() is True
        finally:
            holder.kill()


# -- single-flight ---------------------------------------------------------------------
def _single_flight_process(
    redis_url: str, namespace: str, prefix: str, threads: int, everyone: int
) -> None:
    """One 'kernel': ``threads`` threads make the same request at the same moment."""
    client = connect_redis(redis_url)
    cache = LlmCache(client)
    key = _key(namespace, _request(prompt="the same question"))

    def compute() -> CachedResponse:
        client.incr(f"{prefix}:computes")
        time.sleep(0.5)  # a slow provider call
        return _response(text=f"computed by {os.getpid()}/{threading.get_ident()}")

    def one_caller() -> None:
        client.incr(f"{prefix}:ready")
        wait_until(  # start together
            lambda: int(client.get(f"{prefix}:ready") or 0) >= everyone,
            30,
            interval=0.002,
            what="every caller of both processes to be ready",
        )
        value, was_leader = single_flight(
            cache, lambda name: RedisLock(client, name, ttl_s=5), key, compute, wait_s=20
        )
        me = f"{os.getpid()}/{threading.get_ident()}"
        text = value.body["choices"][0]["message"]["content"]
        client.rpush(f"{prefix}:results", json.dumps([me, text, was_leader]))

    workers = [threading.Thread(target=one_caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()


def test_single_flight_across_two_processes_computes_once(
    redis_url: str, client: redis.Redis, namespace: str, scratch: str
) -> None:
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=_single_flight_process, args=(redis_url, namespace, scratch, 10, 20))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]
    results = [json.loads(raw) for raw in client.lrange(f"{scratch}:results", 0, -1)]
    assert len(results) == 20
    assert int(client.get(f"{scratch}:computes") or 0) == 1
    leaders = [me for me, _, was_leader in results if was_leader]
    assert len(leaders) == 1
    assert {text for _, text, _ in results} == {f"computed by {leaders[0]}"}
    assert len({me.split("/")[0] for me, _, _ in results}) == 2  # both kernels took part


def _run_threads(count: int, target: Callable[[], object]) -> list[object]:
    outcomes: list[object] = []
    guard = threading.Lock()

    def run() -> None:
        try:
            outcome = target()
        except Exception as exc:
            outcome = exc
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_single_flight_leader_failure_lets_one_follower_take_over(
    cache: LlmCache, client: redis.Redis, namespace: str, scratch: str
) -> None:
    key = _key(namespace, _request(prompt="fails first"))
    computes = f"{scratch}:computes"

    def compute() -> CachedResponse:
        attempt = client.incr(computes)
        time.sleep(0.3)
        if attempt == 1:
            raise RuntimeError("provider said 500")
        return _response(text=f"attempt {attempt}")

    outcomes = _run_threads(
        10,
        lambda: single_flight(cache, lambda name: RedisLock(client, name), key, compute, wait_s=10),
    )
    failures = [o for o in outcomes if isinstance(o, Exception)]
    successes = [o for o in outcomes if isinstance(o, tuple)]
    assert [str(f) for f in failures] == ["provider said 500"]
    assert int(client.get(computes) or 0) == 2
    assert {value.body["choices"][0]["message"]["content"] for value, _ in successes} == {
        "attempt 2"
    }
    assert sum(1 for _, was_leader in successes if was_leader) == 1


def test_single_flight_takes_over_from_a_leader_that_died(
    cache: LlmCache, client: redis.Redis, namespace: str
) -> None:
    key = _key(namespace, _request(prompt="leader dies"))
    dead_leader = RedisLock(client, key.lock_name, ttl_s=0.5, auto_renew=False)
    dead_leader.acquire()  # it never stores, never releases, never renews
    started = time.monotonic()
    value, was_leader = single_flight(
        cache, lambda name: RedisLock(client, name), key, _response, wait_s=30
    )
    assert was_leader is True and value == _response()
    # it waited for the dead leader's lock to lapse (0.5 s), then took over well before
    # giving up on the leader (30 s)
    assert 0.3 < time.monotonic() - started < 10
    assert cache.get(key) == _response()


def test_single_flight_serves_hits_and_bounds_the_wait(
    cache: LlmCache, client: redis.Redis, namespace: str
) -> None:
    key = _key(namespace, _request(prompt="cached"))
    cache.set(key, _response(text="from cache"))

    def must_not_run() -> CachedResponse:
        raise AssertionError("computed although cached")

    value, was_leader = single_flight(
        cache, lambda name: RedisLock(client, name), key, must_not_run, wait_s=1
    )
    assert was_leader is False and value.body["choices"][0]["message"]["content"] == "from cache"

    busy = _key(namespace, _request(prompt="slow leader"))
    with RedisLock(client, busy.lock_name):  # a leader still computing
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=r"still being computed elsewhere after 0\.3 s"):
            single_flight(cache, lambda name: RedisLock(client, name), busy, must_not_run, 0.3)
        assert 0.3 <= time.monotonic() - started < 5.0  # the leader renews: never lapses


# -- near cache: entries kept in the process, invalidated by Redis's pushes -------------
def _set_and_settle(cache: LlmCache, key: CacheKey, value: CachedResponse, **ttl: float) -> None:
    """``cache.set``, then wait for the write's own push (Redis tells every tracking
    client, the writer too) so that a read after it remembers what it reads."""
    near = cache.near
    assert near is not None
    before = near.fill_token()
    cache.set(key, value, **ttl)
    wait_until(lambda: near.fill_token() >= before + 2)  # the local forget + the push


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def _armed(cache: LlmCache) -> Any:
    near = cache.near
    assert near is not None and near.wait_armed(30), "the invalidation feed did not connect"
    return near


def test_a_repeated_hit_is_served_from_memory(cache: LlmCache, namespace: str) -> None:
    near = _armed(cache)
    key = _key(namespace, _request())
    stored = _response()
    _set_and_settle(cache, key, stored)
    assert cache.get(key) == stored  # read from Redis, remembered
    served = near.served
    for _ in range(5):
        assert cache.get(key) == stored
    assert near.served == served + 5


def test_another_clients_change_reaches_the_memory(
    cache: LlmCache, client: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Another kernel (its own client and cache) overwrites and then deletes the entry:
    this process's copy goes as soon as Redis's push arrives; it never serves the old one
    after that."""
    _armed(cache)
    key = _key(namespace, _request())
    _set_and_settle(cache, key, _response(text="first"))
    assert cache.get(key) == _response(text="first")
    other_client = connect_redis(redis_url)
    other = LlmCache(other_client, near_cache=False)
    try:
        other.set(key, _response(text="second"))
        wait_until(lambda: cache.get(key) == _response(text="second"))
        assert cache.get(key) == _response(text="second")  # now remembered again
        other.invalidate_key(key)
        wait_until(lambda: cache.get(key) is None)
        client.set(key.redis_key, _response(text="raw").to_json())  # any writer counts
        wait_until(lambda: cache.get(key) == _response(text="raw"))
    finally:
        other_client.close()


def test_this_processs_own_invalidation_needs_no_push(cache: LlmCache, namespace: str) -> None:
    _armed(cache)
    key = _key(namespace, _request(model="gpt-4o"))
    cache.set(key, _response(model="gpt-4o"))
    assert cache.get(key) is not None and cache.get(key) is not None
    assert cache.invalidate_model("gpt-4o", namespace) == 1
    assert cache.get(key) is None  # at once, no waiting
    cache.set(key, _response(model="gpt-4o", text="again"))
    assert cache.get(key) == _response(model="gpt-4o", text="again")


def test_a_remembered_entry_keeps_its_ttl(client: redis.Redis, namespace: str) -> None:
    cache = LlmCache(client)
    try:
        _armed(cache)
        key = _key(namespace, _request())
        _set_and_settle(cache, key, _response(), ttl_s=0.4)
        assert cache.get(key) is not None  # remembered with the 0.4 s it has left
        assert cache.near is not None and len(cache.near) == 1
        # Wait on Redis's clock, without touching the key (a read would expire it and
        # push an invalidation): once its TTL is over, memory must not serve it either.
        remaining_ms = client.pttl(key.redis_key)
        expires_ms = _redis_now_ms(client) + remaining_ms  # PTTL first: an upper bound
        wait_until(lambda: _redis_now_ms(client) >= expires_ms, 10, what="the TTL to pass")
        assert cache.get(key) is None
    finally:
        cache.close()


def test_a_fill_that_raced_an_invalidation_is_dropped(
    cache: LlmCache, client: redis.Redis, namespace: str
) -> None:
    """A reader that read the old value before another client's write must not remember
    it once that write's push has arrived."""
    near = _armed(cache)
    key = _key(namespace, _request())
    token = near.fill_token()  # the reader starts ...
    stale = _response(text="stale")
    client.set(key.redis_key, _response(text="fresh").to_json())  # ... another writes
    wait_until(lambda: near.fill_token() > token)  # the push arrived
    assert near.fill(key.redis_key, stale, 100, 60.0, token) is False
    assert cache.get(key) == _response(text="fresh")
    assert near.fill(key.redis_key, stale, 100, 60.0, near.fill_token()) is True  # no race


def test_a_lost_feed_empties_the_memory_until_it_is_back(
    client: redis.Redis, namespace: str
) -> None:
    """Redis kills the feed's connection: nothing is served from memory until a new
    feed is connected (entries changed meanwhile would have gone unnoticed)."""
    cache = LlmCache(client, retry_after_s=1.5)  # the disarmed window the test watches
    try:
        near = _armed(cache)
        key = _key(namespace, _request())
        _set_and_settle(cache, key, _response())
        assert cache.get(key) is not None and len(near) == 1
        feeds = [c for c in client.client_list() if c.get("name") == "wflo-cache-invalidations"]
        assert feeds
        for feed in feeds:
            client.client_kill_filter(_id=feed["id"])
        wait_until(lambda: not near.armed)
        assert len(near) == 0
        client.set(key.redis_key, _response(text="changed while the feed was down").to_json())
        assert cache.get(key) == _response(text="changed while the feed was down")
        assert near.wait_armed(30)
    finally:
        cache.close()


def test_a_flush_and_a_stopped_server_empty_the_memory(private_redis: PrivateRedis) -> None:
    client = connect_redis(private_redis.url)
    cache = LlmCache(client, retry_after_s=0.2)
    try:
        near = _armed(cache)
        key = _key("flush", _request())
        _set_and_settle(cache, key, _response())
        assert cache.get(key) is not None and len(near) == 1
        client.flushdb()
        wait_until(lambda: len(near) == 0)
        assert cache.get(key) is None
        _set_and_settle(cache, key, _response())
        assert cache.get(key) is not None and len(near) == 1
        private_redis.stop()
        wait_until(lambda: not near.armed)
        assert len(near) == 0 and cache.get(key) is None  # Redis down: a miss, not memory
        private_redis.start()
        assert near.wait_armed(30)
        assert cache.get(key) is None  # the restarted server is empty
    finally:
        cache.close()
        client.close()


def test_memory_is_bounded_least_recently_used_first(client: redis.Redis, namespace: str) -> None:
    cache = LlmCache(client)
    try:
        near = _armed(cache)
        near.max_entries = 3
        keys = [_key(namespace, _request(prompt=f"p{i}")) for i in range(5)]
        before = near.fill_token()
        for key in keys:
            cache.set(key, _response())
        # each write is forgotten here at once, and again when its own push comes back
        wait_until(lambda: near.fill_token() >= before + 2 * len(keys))
        for key in keys:
            assert cache.get(key) is not None
        assert len(near) == 3
        served = near.served
        assert cache.get(keys[0]) is not None  # evicted: read from Redis again
        assert near.served == served
        assert cache.get(keys[4]) is not None
        assert near.served == served + 1
    finally:
        cache.close()


def test_a_redis_that_refuses_the_feed_is_asked_again_only_rarely(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A locked-down Redis (an ACL user without CLIENT TRACKING) refuses CLIENT TRACKING: the
    cache still works through Redis, nothing is served from memory, the refusal is
    logged once, and the feed does not reconnect in a loop."""
    admin = redis.Redis.from_url(private_redis.url)
    acl = ["on", ">pw", "~*", "&*", "+@all", "-client", "+client|setname"]  # no TRACKING
    admin.execute_command("ACL", "SETUSER", "limited", *acl)
    url = private_redis.url.replace("redis://", "redis://limited:pw@")
    client = connect_redis(url)
    cache = LlmCache(client, retry_after_s=0.05)
    try:
        assert cache.near is not None
        with caplog.at_level(logging.INFO, logger="wflo_jupyter.cache.near"):
            key = _key("acl", _request())
            cache.set(key, _response())
            before = int(admin.info("stats")["total_connections_received"])
            # A bounded negative check: over 20 retry intervals the refused feed is asked
            # again at most once or twice, not every 0.05 s.
            for _ in range(20):
                assert cache.get(key) == _response()
                time.sleep(0.05)
            after = int(admin.info("stats")["total_connections_received"])
        assert not cache.near.armed and cache.near.served == 0
        assert after - before <= 2, "the refused feed kept reconnecting"
        refusals = [r for r in caplog.records if "refused its invalidation feed" in r.message]
        assert len(refusals) == 1, [r.message for r in caplog.records]
    finally:
        cache.close()
        client.close()
        admin.close()
