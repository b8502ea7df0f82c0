"""The gateway's ``HitRecorder`` against real Postgres and Redis: cache hits' $0 rows and
counters are group-committed, every one of them is written, and ``drain`` waits for them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.gateway.recorder import HitRecorder
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def budgets(fresh_database_url: str) -> Iterator[BudgetLedger]:
    ledger = BudgetLedger.connect(fresh_database_url)
    yield ledger
    ledger.close()


@pytest.fixture
def cache(redis_url: str) -> Iterator[LlmCache]:
    client = connect_redis(redis_url)
    yield LlmCache(client)
    client.close()


def _hit(saved: int = 7) -> LlmCall:
    return LlmCall("openai", "gpt-4o-mini", "chat", saved_micros=saved, cached=True)


def _cached_rows(budgets: BudgetLedger) -> tuple[int, int, int]:
    with budgets.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), coalesce(sum(saved_micros), 0), "
                "(SELECT count(*) FROM outbox WHERE event_type = 'llm.call') "
                "FROM llm_calls WHERE cached AND cost_micros = 0"
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def test_a_burst_of_hits_is_written_in_few_transactions(
    budgets: BudgetLedger, cache: LlmCache
) -> None:
    namespace = f"rec-{uuid.uuid4().hex[:8]}"
    recorder = HitRecorder(budgets, cache, linger_s=0.05)
    try:
        threads = [
            threading.Thread(
                target=lambda: [recorder.record(None, _hit(), namespace) for _ in range(25)]
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert recorder.drain(10)
        assert _cached_rows(budgets) == (200, 1400, 200)  # a row and an event per hit
        assert recorder.written == 200 and recorder.lost == 0
        assert recorder.batches < 50, recorder.batches  # group-committed, not 200 commits
        stats = cache.stats(namespace)
        assert (stats.hits, stats.saved_micros) == (200, 1400)
    finally:
        recorder.close()
        cache.reset_stats(namespace)


def test_drain_writes_at_once_and_close_writes_the_rest(budgets: BudgetLedger) -> None:
    recorder = HitRecorder(budgets, None, linger_s=30.0)  # would wait 30 s for more hits
    assert recorder.drain(1)  # nothing was ever queued: returns at once
    recorder.record(None, _hit(3), "ns")
    assert recorder.drain(5), "drain did not cut the linger short"
    assert _cached_rows(budgets)[:2] == (1, 3)
    recorder.record(None, _hit(4), "ns")
    recorder.close()
    assert _cached_rows(budgets)[:2] == (2, 7)
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record(None, _hit(), "ns")


def test_a_hit_row_that_cannot_be_written_is_counted_lost(fresh_database_url: str) -> None:
    ledger = BudgetLedger.connect(fresh_database_url)
    with ledger.engine.begin() as conn:  # the ledger refuses every write of a hit
        conn.execute(text("ALTER TABLE llm_calls ADD CONSTRAINT no_hits CHECK (NOT cached)"))
    recorder = HitRecorder(ledger, None, linger_s=0.0, retry_s=0.3)
    try:
        recorder.record(None, _hit(), "ns")
        assert recorder.drain(10)  # drain returns: the batch was retried, then given up
        assert (recorder.written, recorder.lost) == (0, 1)
        with ledger.engine.begin() as conn:
            conn.execute(text("ALTER TABLE llm_calls DROP CONSTRAINT no_hits"))
        recorder.record(None, _hit(), "ns")  # the recorder keeps working afterwards
        assert recorder.drain(10)
        assert recorder.written == 1
    finally:
        recorder.close()
        ledger.close()
