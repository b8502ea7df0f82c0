"""Assembling a kernel's LLM gateway from its parts: provider routes, the upstream (the
real providers, or the offline mock), the price book with its token counter, the Redis
cache and its locks, and the budget ledger. Also what a step's sandbox calls for each
``llm_request`` frame.

The session calls these with plain values (paths, URLs, names), so the gateway knows
nothing of settings or of the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.cache.locks import RedisLock
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.core.budget import BudgetScope
from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.gateway.channel import frame_handlers
from wflo_jupyter.gateway.estimate import EstimateGateway
from wflo_jupyter.gateway.inflight import InflightCalls, tracking_client
from wflo_jupyter.gateway.mock import MockUpstream
from wflo_jupyter.gateway.service import CallContext, LlmGateway, UpstreamLike
from wflo_jupyter.gateway.upstream import ProviderRoutes, Upstream
from wflo_jupyter.ledger.pricing import PriceBook
from wflo_jupyter.ledger.tokens import TokenCounter

if TYPE_CHECKING:
    from wflo_jupyter.ledger.budgets import BudgetLedger

Frame = dict[str, Any]
LlmHandler = Callable[[Frame, Callable[[Frame], None]], None]
LlmFastPath = Callable[[Frame, Callable[[Frame], None]], bool]


def build_gateway(
    budgets: BudgetLedger,
    *,
    home: Path,
    redis_url: str | None,
    simulated: bool,
    price_overrides: dict[str, Any] | None,
    on_missing: Callable[[str], None],
) -> tuple[LlmGateway, LlmCache | None]:
    """The gateway, and its cache (None without Redis). ``simulated``: the offline mock
    answers every call (``WFLO_PROVIDER=mock``); ``on_missing`` hears once about a
    missing tokenizer."""
    routes = ProviderRoutes.from_env()
    counter = TokenCounter(home, on_missing=on_missing)
    prices = PriceBook(price_overrides or None, counter=counter)
    inflight = InflightCalls()
    upstream: UpstreamLike = (
        MockUpstream(lambda provider, model, body: counter.count(provider, model, body)[0])
        if simulated
        else Upstream(routes, tracking_client(inflight), inflight=inflight)
    )
    cache: LlmCache | None = None
    lock_factory = None
    if redis_url:
        client = connect_redis(redis_url)
        cache = LlmCache(client)
        lock_factory = lambda name: RedisLock(client, name)  # noqa: E731
    gateway = LlmGateway(
        routes=routes,
        upstream=upstream,
        budgets=budgets,
        prices=prices,
        cache=cache,
        lock_factory=lock_factory,
        simulated=simulated,
        inflight=inflight,
    )
    return gateway, cache


def step_handlers(
    gateway: LlmGateway,
    *,
    step_id: str,
    scopes: list[tuple[str, str]],
    no_cache: bool,
    notice: Callable[[str], None],
    origin: str,
    confirm_above_micros: int | None = None,
    confirm: Callable[[str], bool | None] | None = None,
) -> tuple[LlmHandler, LlmFastPath]:
    """What the sandbox calls for each ``llm_request`` frame of one step's cell: the
    worker-thread handler, and the reading thread's cache-hit fast path. ``scopes`` are
    the enclosing budgets, narrowest first; a call whose worst case is above
    ``confirm_above_micros`` is sent only after ``confirm`` says yes."""
    context = CallContext(
        step_id=step_id,
        scopes=tuple(BudgetScope(kind, key) for kind, key in scopes),  # type: ignore[arg-type]
        no_cache=no_cache,
        notice=notice,
        origin=origin,
        confirm_above_micros=confirm_above_micros,
        confirm=confirm,
    )
    return frame_handlers(gateway, context)


def estimate_handlers(
    gateway: LlmGateway, tally: EstimateTally, *, no_cache: bool
) -> tuple[LlmHandler, LlmFastPath]:
    """The same for a ``--estimate`` dry run: every call is priced into ``tally`` and
    answered with a placeholder; nothing is reserved, sent, cached or recorded."""
    context = CallContext(step_id=None, scopes=(), no_cache=no_cache)
    return frame_handlers(EstimateGateway(gateway, tally), context)
