"""The gateway's free path and its output-limit refusals, against real Postgres, real
Redis and the fake provider over HTTP (and the offline mock): ``count_tokens`` and the
models routes reach the provider with the host's key, are neither reserved nor cached,
and are recorded at $0; a ``max_tokens`` above the model's limit is refused in the
provider's 400 shape before anything is reserved or sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from tests.fakes.providers import FakeProvider
from tests.helpers import start_step
from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.cache.locks import RedisLock
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.core.budget import BudgetScope
from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.gateway.channel import request_from_frame
from wflo_jupyter.gateway.estimate import EstimateGateway
from wflo_jupyter.gateway.mock import MockUpstream
from wflo_jupyter.gateway.service import CallContext, GatewayRequest, LlmGateway, UpstreamLike
from wflo_jupyter.gateway.upstream import ProviderRoutes, Upstream
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.pricing import PriceBook
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def full(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def start(self, status: int, headers: dict[str, str]) -> None:
        raise AssertionError("no stream expected")

    def chunk(self, data: bytes) -> None:
        raise AssertionError("no stream expected")

    def end(self, error: str | None = None) -> None:
        raise AssertionError("no stream expected")

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Rig:
    gateway: LlmGateway
    budgets: BudgetLedger
    fake: FakeProvider
    step: str
    notices: list[str]

    def ctx(self) -> CallContext:
        return CallContext(
            step_id=self.step,
            scopes=(BudgetScope("cell", self.step),),
            namespace=f"test-{self.step[:8]}",
            notice=self.notices.append,
        )

    def calls(self) -> list[dict]:
        with self.budgets.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT provider, model, endpoint, cached, simulated, cost_micros, "
                    "input_tokens, output_tokens, reservation_id FROM llm_calls "
                    "WHERE step_id = :s ORDER BY created_at"
                ),
                {"s": self.step},
            )
            return [dict(r) for r in rows.mappings()]

    def reservations(self) -> int:
        with self.budgets.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM reservations WHERE step_id = :s"), {"s": self.step}
                ).scalar_one()
            )


def _rig(database_url: str, redis_url: str, *, simulated: bool) -> Iterator[Rig]:
    fake = FakeProvider()
    routes = ProviderRoutes.from_env(
        {
            "OPENAI_API_KEY": "sk-host-secret",
            "WFLO_OPENAI_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-host",
            "WFLO_ANTHROPIC_BASE_URL": fake.url,
        }
    )
    budgets = BudgetLedger.connect(database_url)
    client = connect_redis(redis_url)
    prices = PriceBook()
    upstream: UpstreamLike = (
        MockUpstream(lambda p, m, b: prices.counter.count(p, m, b)[0])
        if simulated
        else Upstream(routes, sleep=lambda _s: None)
    )
    gateway = LlmGateway(
        routes=routes,
        upstream=upstream,
        budgets=budgets,
        prices=prices,
        cache=LlmCache(client),
        lock_factory=lambda name: RedisLock(client, name),
        simulated=simulated,
    )
    _, step = start_step(Ledger(budgets.engine))
    budgets.set_budget("cell", step, 1_000_000)
    yield Rig(gateway, budgets, fake, step, [])
    gateway.close()
    budgets.close()
    client.close()
    fake.close()


@pytest.fixture
def rig(fresh_database_url: str, redis_url: str) -> Iterator[Rig]:
    yield from _rig(fresh_database_url, redis_url, simulated=False)


@pytest.fixture
def mock_rig(fresh_database_url: str, redis_url: str) -> Iterator[Rig]:
    yield from _rig(fresh_database_url, redis_url, simulated=True)


def frame(path: str, method: str = "POST", provider: str = "openai", **body: object) -> dict:
    return {
        "type": "llm_request",
        "id": uuid.uuid4().hex,
        "cell": None,
        "provider": provider,
        "method": method,
        "path": path,
        "headers": {"anthropic-version": "2023-06-01"} if provider == "anthropic" else {},
        "body": body,
    }


def call(rig: Rig, request: GatewayRequest | dict) -> Reply:
    if isinstance(request, dict):
        request = request_from_frame(request)
    reply = Reply()
    rig.gateway.handle(request, rig.ctx(), reply)
    return reply


COUNT = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}]}


def test_free_calls_reach_the_provider_with_the_host_key_and_cost_nothing(rig: Rig) -> None:
    counted = call(rig, frame("/v1/messages/count_tokens", provider="anthropic", **COUNT))
    assert counted.status == 200 and counted.json()["input_tokens"] > 0
    again = call(rig, frame("/v1/messages/count_tokens", provider="anthropic", **COUNT))
    assert again.json() == counted.json()  # not cached: the provider answered twice
    listed = call(rig, frame("/v1/models", "GET"))
    assert listed.json()["object"] == "list"
    assert "gpt-4o-mini" in [m["id"] for m in listed.json()["data"]]
    claude = call(rig, frame("/v1/models?limit=5", "GET", "anthropic"))
    assert claude.json()["data"][0]["type"] == "model"
    one = call(rig, frame("/v1/models/gpt-4o-mini", "GET"))
    assert one.json() == {**one.json(), "id": "gpt-4o-mini", "object": "model"}

    sent = rig.fake.requests
    assert [(r.method, r.path) for r in sent] == [
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models?limit=5"),
        ("GET", "/v1/models/gpt-4o-mini"),
    ]
    assert sent[0].headers["x-api-key"] == "sk-ant-host"
    assert sent[2].headers["authorization"] == "Bearer sk-host-secret"
    assert "content-type" not in sent[2].headers
    assert rig.reservations() == 0
    rows = rig.calls()
    assert [(r["provider"], r["endpoint"], r["model"]) for r in rows] == [
        ("anthropic", "count_tokens", "claude-3-5-haiku-latest"),
        ("anthropic", "count_tokens", "claude-3-5-haiku-latest"),
        ("openai", "models", "(model list)"),
        ("anthropic", "models", "(model list)"),
        ("openai", "models", "gpt-4o-mini"),
    ]
    assert all(r["cost_micros"] == 0 and r["reservation_id"] is None for r in rows)
    assert all(r["input_tokens"] == r["output_tokens"] == 0 and not r["cached"] for r in rows)
    state = rig.budgets.state("cell", rig.step)
    assert (state.spent_micros, state.reserved_micros) == (0, 0)


def test_provider_errors_pass_through_in_their_shape_unrecorded(rig: Rig) -> None:
    missing = call(rig, frame("/v1/models/gpt-9", "GET"))
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    rig.fake.fail_next(400)
    refused = call(rig, frame("/v1/messages/count_tokens", provider="anthropic", **COUNT))
    assert refused.status == 400
    assert refused.json()["type"] == "error"
    assert rig.calls() == []
    assert rig.reservations() == 0


def test_the_mock_answers_free_calls_locally(mock_rig: Rig) -> None:
    rig = mock_rig
    counted = call(rig, frame("/v1/messages/count_tokens", provider="anthropic", **COUNT))
    expected, _ = rig.gateway.prices.counter.count("anthropic", COUNT["model"], COUNT, "messages")
    assert counted.json() == {"input_tokens": expected}
    assert counted.headers["x-wflo-simulated"] == "true"
    worst = rig.gateway.prices.worst_case("anthropic", COUNT["model"], COUNT, endpoint="messages")
    assert worst.input_tokens == expected  # the same count the reservation uses
    openai_list = call(rig, frame("/v1/models", "GET")).json()
    assert openai_list["object"] == "list"
    assert {
        "id": "gpt-4o-mini",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "system",
    } in openai_list["data"]
    page = call(rig, frame("/v1/models?limit=2", "GET", "anthropic")).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    assert page["data"][0]["type"] == "model" and page["data"][0]["display_name"]
    rest = call(rig, frame(f"/v1/models?after_id={page['last_id']}", "GET", "anthropic")).json()
    assert page["last_id"] not in [m["id"] for m in rest["data"]]
    dated = call(rig, frame("/v1/models/gpt-4o-mini-2024-07-18", "GET"))
    assert dated.status == 200 and dated.json()["id"] == "gpt-4o-mini-2024-07-18"
    missing = call(rig, frame("/v1/models/claude-9", "GET", "anthropic"))
    assert missing.status == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert rig.fake.requests == []
    rows = rig.calls()
    assert len(rows) == 5 and all(r["simulated"] and r["cost_micros"] == 0 for r in rows)
    assert rig.reservations() == 0


def test_a_max_tokens_above_the_models_limit_is_refused_before_anything(rig: Rig) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    reply = call(
        rig,
        GatewayRequest("openai", "chat", "/v1/chat/completions", {**body, "max_tokens": 100000}),
    )
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["message"] == (
        "OutputLimitExceeded: max_tokens=100000 is above gpt-4o-mini's output limit "
        "of 16,384 tokens"
    )
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "max_tokens",
        "invalid_value",
    )
    assert rig.notices == [error["message"]]
    claude = {"model": "claude-3-5-haiku-latest", "max_tokens": 9000, "messages": body["messages"]}
    refused = call(rig, GatewayRequest("anthropic", "messages", "/v1/messages", claude))
    assert refused.status == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "output limit of 8,192 tokens" in refused.json()["error"]["message"]
    assert rig.fake.requests == []
    assert rig.reservations() == 0
    assert rig.calls() == []
    # without a limit the call is sent capped at the model's own limit, and reserved so
    ok = call(rig, GatewayRequest("openai", "chat", "/v1/chat/completions", body))
    assert ok.status == 200
    assert rig.fake.requests[0].body["max_completion_tokens"] == 16384
    with rig.budgets.engine.connect() as conn:
        label = conn.execute(
            text("SELECT label FROM reservations WHERE step_id = :s"), {"s": rig.step}
        ).scalar_one()
    assert label == "gpt-4o-mini, max_completion_tokens=16384"


def test_the_estimate_reports_the_refusal_instead_of_pricing_it(rig: Rig) -> None:
    tally = EstimateTally()
    dry = EstimateGateway(rig.gateway, tally)
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 100000,
        "messages": [{"role": "user", "content": "x"}],
    }
    reply = Reply()
    dry.handle(GatewayRequest("openai", "chat", "/v1/chat/completions", body), rig.ctx(), reply)
    assert reply.status == 400 and "output limit of 16,384" in reply.json()["error"]["message"]
    counted = Reply()
    dry.handle(
        request_from_frame(frame("/v1/messages/count_tokens", provider="anthropic", **COUNT)),
        rig.ctx(),
        counted,
    )
    assert counted.status == 200 and counted.json()["input_tokens"] > 0
    assert tally.calls == 0
    lines = tally.lines()
    assert "1 call would be refused before anything is reserved:" in lines
    assert any("max_tokens=100000 is above gpt-4o-mini's output limit" in line for line in lines)
    assert rig.fake.requests == [] and rig.calls() == [] and rig.reservations() == 0
