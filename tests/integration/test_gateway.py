"""``LlmGateway`` against real Postgres (budgets, ledger), real Redis (cache, locks) and
the fake provider over HTTP: cache hits at $0, reservations before the provider is
contacted, streams relayed and replayed, errors in the provider's shape."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from tests.fakes.providers import FakeProvider
from tests.helpers import start_step, wait_until
from wflo_jupyter.cache.keys import cache_key
from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.cache.locks import RedisLock
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.core.budget import BudgetScope
from wflo_jupyter.gateway.inflight import InflightCalls, tracking_client
from wflo_jupyter.gateway.service import CallContext, GatewayRequest, LlmGateway
from wflo_jupyter.gateway.streams import assemble, parse_events
from wflo_jupyter.gateway.upstream import ProviderRoutes, Upstream
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.pricing import PriceBook
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

MODEL = "gpt-4o-mini"


@dataclass
class Collected:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    ended: bool = False

    def full(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def start(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self, error: str | None = None) -> None:
        self.ended = True

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Rig:
    gateway: LlmGateway
    budgets: BudgetLedger
    fake: FakeProvider
    cache: LlmCache
    namespace: str
    notices: list[str]

    def ctx(
        self,
        step_id: str | None = None,
        scopes: tuple[BudgetScope, ...] = (),
        no_cache: bool = False,
    ) -> CallContext:
        return CallContext(
            step_id=step_id,
            scopes=scopes or (BudgetScope("notebook", self.namespace),),
            no_cache=no_cache,
            namespace=self.namespace,
            notice=self.notices.append,
        )


@pytest.fixture
def rig(fresh_database_url: str, redis_url: str) -> Iterator[Rig]:
    fake = FakeProvider()
    routes = ProviderRoutes.from_env(
        {
            "OPENAI_API_KEY": "sk-host-secret",
            "WFLO_OPENAI_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-host",
            "WFLO_ANTHROPIC_BASE_URL": fake.url,
        }
    )
    budgets = BudgetLedger.connect(fresh_database_url)
    client = connect_redis(redis_url)
    cache = LlmCache(client)
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    gateway = LlmGateway(
        routes=routes,
        upstream=Upstream(routes, sleep=lambda _s: None),
        budgets=budgets,
        prices=PriceBook(),
        cache=cache,
        lock_factory=lambda name: RedisLock(client, name),
    )
    budgets.set_budget("notebook", namespace, 10**12)  # a session always has a notebook scope
    yield Rig(gateway, budgets, fake, cache, namespace, [])
    gateway.close()
    cache.invalidate_namespace(namespace)
    budgets.close()
    client.close()
    fake.close()


def chat(content: str, **extra: object) -> GatewayRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return GatewayRequest("openai", "chat", "/v1/chat/completions", body)


def _calls(rig: Rig) -> list[dict]:
    """The ledger's llm_calls rows, once the gateway has written its queued cache hits."""
    assert rig.gateway.drain(10), "the cache hits' rows were not written within 10 s"
    with rig.budgets.engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "SELECT cached, cost_micros, saved_micros, input_tokens, output_tokens "
                    "FROM llm_calls ORDER BY created_at"
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def test_second_identical_call_is_a_cache_hit_at_zero(rig: Rig) -> None:
    first, second = Collected(), Collected()
    rig.gateway.handle(chat("hello"), rig.ctx(), first)
    rig.gateway.handle(chat("hello"), rig.ctx(), second)
    assert first.status == second.status == 200
    assert first.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert second.json()["choices"] == first.json()["choices"]
    assert len(rig.fake.requests) == 1
    paid, hit = _calls(rig)
    assert paid["cached"] is False and paid["cost_micros"] > 0
    assert hit["cached"] is True and hit["cost_micros"] == 0
    assert hit["saved_micros"] == paid["cost_micros"]
    assert rig.gateway.drain(10)
    stats = rig.cache.stats(rig.namespace)
    assert (stats.hits, stats.misses) == (1, 1)


def test_over_budget_call_never_reaches_the_provider(rig: Rig) -> None:
    ledger = Ledger(rig.budgets.engine)
    _, step = start_step(ledger)
    rig.budgets.set_budget("cell", step, 1)  # one micro-dollar
    reply = Collected()
    rig.gateway.handle(
        chat("expensive", max_tokens=800), rig.ctx(step, (BudgetScope("cell", step),)), reply
    )
    assert reply.status == 402
    message = reply.json()["error"]["message"]
    assert message.startswith("BudgetExceeded: cell budget $0.000001")
    assert "max_tokens=800" in message and MODEL in message
    assert rig.fake.requests == []
    assert rig.notices == [message]
    state = rig.budgets.state("cell", step)
    assert (state.spent_micros, state.reserved_micros) == (0, 0)


def test_reservation_is_settled_at_the_real_cost(rig: Rig) -> None:
    rig.budgets.set_budget("notebook", rig.namespace, 1_000_000)
    scope = (BudgetScope("notebook", rig.namespace),)
    reply = Collected()
    rig.gateway.handle(chat("settle me", max_tokens=50), rig.ctx(None, scope, no_cache=True), reply)
    assert reply.status == 200
    state = rig.budgets.state("notebook", rig.namespace)
    (call,) = _calls(rig)
    assert state.reserved_micros == 0
    assert state.spent_micros == call["cost_micros"] > 0


def test_stream_is_relayed_and_replayed_from_cache(rig: Rig) -> None:
    live, replay = Collected(), Collected()
    rig.gateway.handle(chat("stream me", stream=True), rig.ctx(), live)
    rig.gateway.handle(chat("stream me", stream=True), rig.ctx(), replay)
    for reply in (live, replay):
        assert reply.status == 200 and reply.ended
        events = parse_events(b"".join(reply.chunks))
        assert assemble("chat", events)["choices"][0]["message"]["content"] == "echo: stream me"
        # the cell did not ask for usage: no usage-only chunk reaches it
        assert not any(
            e.data.startswith("{") and json.loads(e.data).get("choices") == [] for e in events
        )
    assert len(rig.fake.requests) == 1
    assert rig.fake.requests[0].body["stream_options"] == {"include_usage": True}
    paid, hit = _calls(rig)
    assert paid["output_tokens"] > 0 and hit["cached"] is True


def test_no_cache_always_calls_the_provider(rig: Rig) -> None:
    for _ in range(2):
        rig.gateway.handle(chat("again"), rig.ctx(no_cache=True), Collected())
    assert len(rig.fake.requests) == 2


def test_provider_errors_come_back_in_its_shape_and_are_not_cached(rig: Rig) -> None:
    rig.fake.fail_next(400)
    failed, after = Collected(), Collected()
    rig.gateway.handle(chat("bad"), rig.ctx(), failed)
    assert failed.status == 400
    assert failed.json()["error"]["type"] == "invalid_request_error"
    assert b"sk-host-secret" not in failed.body
    rig.gateway.handle(chat("bad"), rig.ctx(), after)
    assert after.status == 200  # the error was not cached
    assert len(_calls(rig)) == 1  # only the successful call was recorded


def test_unknown_model_price_is_a_clear_error(rig: Rig) -> None:
    reply = Collected()
    request = GatewayRequest(
        "openai",
        "chat",
        "/v1/chat/completions",
        {"model": "no-such-model-xyz", "messages": [{"role": "user", "content": "x"}]},
    )
    rig.gateway.handle(request, rig.ctx(), reply)
    assert reply.status == 400
    assert "no-such-model-xyz" in reply.json()["error"]["message"]
    assert rig.fake.requests == []


def test_anthropic_messages(rig: Rig) -> None:
    reply = Collected()
    request = GatewayRequest(
        "anthropic",
        "messages",
        "/v1/messages",
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hey"}],
        },
    )
    rig.gateway.handle(request, rig.ctx(), reply)
    assert reply.status == 200
    assert reply.json()["content"][0]["text"] == "echo: hey"
    assert rig.fake.requests[0].headers["x-api-key"] == "sk-ant-host"


def test_concurrent_identical_calls_make_one_provider_request(rig: Rig) -> None:
    rig.fake.state.delay_s = 0.5
    replies = [Collected() for _ in range(20)]
    threads = [
        threading.Thread(target=rig.gateway.handle, args=(chat("together"), rig.ctx(), r))
        for r in replies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status for r in replies} == {200}
    assert len(rig.fake.requests) == 1
    key = cache_key(
        provider="openai",
        base_url=rig.fake.base_url,
        endpoint="chat",
        body=chat("together").body,
        namespace=rig.namespace,
    )
    assert rig.cache.get(key) is not None


def test_per_call_cache_ttl(rig: Rig) -> None:
    request = chat("short-lived")
    short = GatewayRequest(
        request.provider, request.endpoint, request.path, request.body, {"x-wflo-cache-ttl": "1"}
    )
    key = cache_key(
        provider="openai",
        base_url=rig.fake.base_url,
        endpoint="chat",
        body=request.body,
        namespace=rig.namespace,
    )
    rig.gateway.handle(short, rig.ctx(), Collected())
    rig.gateway.handle(short, rig.ctx(), Collected())
    assert len(rig.fake.requests) == 1  # cached ...
    ttl = rig.cache.ttl_s(key)
    assert ttl is not None and 0 < ttl <= 1.0  # the TTL the header asked for
    wait_until(lambda: rig.cache.ttl_s(key) is None, 10, what="the cached answer to expire")
    rig.gateway.handle(short, rig.ctx(), Collected())
    assert len(rig.fake.requests) == 2  # ... for one second only
    bad = Collected()
    rig.gateway.handle(
        GatewayRequest(
            request.provider,
            request.endpoint,
            request.path,
            chat("x").body,
            {"x-wflo-cache-ttl": "soon"},
        ),
        rig.ctx(),
        bad,
    )
    assert bad.status == 400
    assert "x-wflo-cache-ttl: not a number of seconds: 'soon'" in bad.json()["error"]["message"]


def test_clearing_a_notebook_removes_only_the_answers_it_stored(rig: Rig) -> None:
    notebook_a = dataclasses.replace(rig.ctx(), origin=f"a-{rig.namespace}.ipynb")
    notebook_b = dataclasses.replace(rig.ctx(), origin=f"b-{rig.namespace}.ipynb")
    for ctx, content in ((notebook_a, "from a"), (notebook_b, "from b")):
        rig.gateway.handle(chat(content), ctx, Collected())
    rig.gateway.handle(chat("from b"), notebook_a, Collected())  # a hit: a stored nothing
    assert len(rig.fake.requests) == 2
    assert rig.cache.invalidate_origin(notebook_a.origin or "") == 1
    assert rig.cache.invalidate_origin(notebook_a.origin or "") == 0  # nothing left of a's
    rig.gateway.handle(chat("from b"), notebook_a, Collected())  # b's answer is still there
    assert len(rig.fake.requests) == 2
    rig.gateway.handle(chat("from a"), notebook_b, Collected())  # a's is gone: fetched again
    assert len(rig.fake.requests) == 3


def test_the_reading_threads_fast_path_answers_only_cache_hits(rig: Rig) -> None:
    from wflo_jupyter.gateway.channel import frame_handlers

    handle, fast = frame_handlers(rig.gateway, rig.ctx())
    frame = {
        "type": "llm_request",
        "id": "r1",
        "path": "/v1/chat/completions",
        "headers": {},
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "fast"}]},
    }
    sent: list[dict] = []
    assert fast(frame, sent.append) is False and sent == []  # a miss: left to the worker
    handle(frame, sent.append)  # the worker calls the provider and stores the answer
    assert len(rig.fake.requests) == 1 and len(sent) == 1
    assert fast(frame, sent.append) is True  # now a hit, answered on the spot
    assert len(sent) == 2 and sent[1]["status"] == 200 and sent[1]["id"] == "r1"
    assert len(rig.fake.requests) == 1
    bad = {**frame, "path": "/v1/nothing"}
    assert fast(bad, sent.append) is False and len(sent) == 2  # errors are the worker's
    _, fast_no_cache = frame_handlers(rig.gateway, dataclasses.replace(rig.ctx(), no_cache=True))
    assert fast_no_cache(frame, sent.append) is False
    paid, hit = _calls(rig)  # the fast hit has its $0 row like any other
    assert (paid["cached"], hit["cached"], hit["cost_micros"]) == (False, True, 0)


def test_cancelling_a_step_cuts_its_call_off_upstream(rig: Rig) -> None:
    """A call in flight when its step is cancelled: the provider's connection is shut
    down (the fake sees the hang-up), the SDK gets a 499, the reservation is released,
    and a later call of that step is refused before anything is reserved."""
    inflight = InflightCalls()
    routes = rig.gateway.routes
    gateway = LlmGateway(
        routes=routes,
        upstream=Upstream(routes, tracking_client(inflight), inflight=inflight),
        budgets=rig.budgets,
        prices=PriceBook(),
        inflight=inflight,
    )
    _, step = start_step(Ledger(rig.budgets.engine))
    rig.fake.state.delay_s = 60.0
    reply = Collected()
    call = threading.Thread(
        target=gateway.handle, args=(chat("slow"), rig.ctx(step_id=step, no_cache=True), reply)
    )
    call.start()
    wait_until(lambda: rig.fake.requests, 10, what="the call reached the provider")
    assert gateway.cancel_step(step) == 1  # one connection shut down
    call.join(10)
    assert not call.is_alive()
    assert reply.status == 499
    assert reply.json()["error"]["message"] == "the step was cancelled"
    wait_until(lambda: rig.fake.disconnects == 1, 10, what="the provider saw the hang-up")
    with rig.budgets.engine.connect() as conn:
        states = conn.execute(
            text("SELECT state FROM reservations WHERE step_id = :s"), {"s": step}
        ).scalars()
        assert list(states) == ["released"]
    later = Collected()
    gateway.handle(chat("after"), rig.ctx(step_id=step, no_cache=True), later)
    assert later.status == 499
    assert len(rig.fake.requests) == 1  # the later call never left the host
