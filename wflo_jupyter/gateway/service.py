"""``LlmGateway``: one LLM call from the sandbox, end to end, on the host.

cache lookup (Redis, single-flight across kernels) → hit: answer at $0 and record the
saved dollars → miss: worst-case estimate → reserve against every enclosing budget
(atomic, Postgres) → provider call with the host's key → price the real usage → settle
(ledger row, outbox events and NOTIFY in one transaction) → cache store → answer.

A refused reservation never reaches the provider: the cell's SDK gets an error in the
provider's own shape carrying the ``BudgetExceeded`` line, and the cell shows it too; so
does a ``max_tokens`` above the model's limit (``OutputLimitExceeded``, a 400). The free
endpoints (``count_tokens``, ``models``) skip all of it: ``gateway.free``.
With the ledger unreachable a call is not sent: a 503 the SDKs retry (``gateway.outage``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from wflo_jupyter.cache.keys import DEFAULT_NAMESPACE, CacheKey, cache_key
from wflo_jupyter.cache.llm_cache import CachedResponse, LlmCache
from wflo_jupyter.cache.locks import LockTimeout, RedisLock, single_flight
from wflo_jupyter.core.budget import BudgetExceeded, BudgetScope, threshold_notice
from wflo_jupyter.core.errors import OutputLimitExceeded, WfloError
from wflo_jupyter.core.estimates import CallNotConfirmed, confirm_question
from wflo_jupyter.core.money import format_usd
from wflo_jupyter.core.pricing import Usage, normalise_usage
from wflo_jupyter.gateway.free import FreeCalls
from wflo_jupyter.gateway.inflight import CallCancelled, InflightCalls
from wflo_jupyter.gateway.outage import ledger_down_reply
from wflo_jupyter.gateway.recorder import HitRecorder
from wflo_jupyter.gateway.streams import SseEvent, SseParser, assemble, synthesise
from wflo_jupyter.gateway.upstream import ProviderRoutes, UpstreamResponse, error_body, scrub
from wflo_jupyter.ledger.budget_types import Reservation, Settlement
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.health import is_ledger_outage
from wflo_jupyter.ledger.pricing import PriceBook, WorstCase
from wflo_jupyter.sandbox.agent.llm_routes import FREE_ENDPOINTS

log = logging.getLogger(__name__)

BUDGET_STATUS = 402
NOT_CONFIRMED_STATUS = 403
SETTLE_PATIENCE_S = 30.0  # a paid call's settle, retried while the ledger is unreachable
SETTLE_RETRY_S = 0.5
CANCELLED_STATUS = 499  # the client closed the request (nginx's code): the step was cancelled


class UpstreamLike(Protocol):
    def send(
        self,
        provider: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool = False,
        method: str = "POST",
    ) -> AbstractContextManager[UpstreamResponse]: ...


class Responder(Protocol):
    """Where the answer goes (the agent channel, for a cell's request)."""

    def full(self, status: int, headers: dict[str, str], body: bytes) -> None: ...
    def start(self, status: int, headers: dict[str, str]) -> None: ...
    def chunk(self, data: bytes) -> None: ...
    def end(self, error: str | None = None) -> None: ...


@dataclass(frozen=True)
class GatewayRequest:
    """One request the sandbox's SDK made."""

    provider: str  # "openai" | "anthropic"
    endpoint: str  # "chat" | "responses" | "embeddings" | "messages" | FREE_ENDPOINTS
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    @property
    def free(self) -> bool:
        """Nothing is billed for it (``count_tokens``, ``models``): see ``gateway.free``."""
        return self.endpoint in FREE_ENDPOINTS

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def model(self) -> str:
        return str(self.body.get("model") or "")


@dataclass(frozen=True)
class CallContext:
    """Which step the call belongs to and which budgets enclose it (narrowest first)."""

    step_id: str | None
    scopes: tuple[BudgetScope, ...]
    no_cache: bool = False
    namespace: str = DEFAULT_NAMESPACE
    notice: Callable[[str], None] = field(default=lambda _text: None)
    origin: str | None = None  # the notebook: answers it stores can be cleared with it
    # a call whose worst case is above this waits for ``confirm`` (the analyst's answer:
    # True yes, False no, None this run cannot ask) before anything is reserved
    confirm_above_micros: int | None = None
    confirm: Callable[[str], bool | None] | None = None


class _StreamBroken(Exception):
    """The provider's stream failed after the answer had started (already reported)."""


class _ProviderFailed(Exception):
    """The provider answered with an error: passed to the cell, never cached."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


@dataclass
class _Paid:
    body: dict[str, Any]
    usage: Usage
    cost_micros: int
    streamed: bool


class LlmGateway:
    """Host side of every LLM call a session's cells make."""

    def __init__(
        self,
        *,
        routes: ProviderRoutes,
        upstream: UpstreamLike,
        budgets: BudgetLedger,
        prices: PriceBook,
        cache: LlmCache | None = None,
        lock_factory: Callable[[str], RedisLock] | None = None,
        simulated: bool = False,
        lease_s: float = 900.0,
        flight_wait_s: float = 900.0,
        inflight: InflightCalls | None = None,
    ) -> None:
        self.routes = routes
        self.upstream = upstream
        self.budgets = budgets
        self.prices = prices
        self.cache = cache
        self.lock_factory = lock_factory
        self.simulated = simulated
        self.lease_s = lease_s
        self.flight_wait_s = flight_wait_s
        self.inflight = inflight or InflightCalls()
        self.hits = HitRecorder(budgets, cache)
        self.free = FreeCalls(routes, upstream, budgets, prices.counter, simulated=simulated)
        self.on_ledger_outage: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Write the cache hits still queued and stop their writer thread."""
        self.hits.close()

    def cancel_step(self, step_id: str) -> int:
        """A cancelled step: refuse its next calls and cut off those in flight upstream
        (their reservations are released as they end); see ``gateway.inflight``."""
        return self.inflight.cancel_step(step_id)

    # -- entry point ------------------------------------------------------------------------
    def handle(self, request: GatewayRequest, ctx: CallContext, responder: Responder) -> None:
        """Answer ``request`` through ``responder``; never raises for the call's own
        failures (they become provider-shaped errors)."""
        provider = request.provider
        if request.free:
            self.free.handle(request, ctx, responder)
            return
        try:
            if not request.model:
                self._error(responder, provider, 400, "you must provide a model parameter")
                return
            if self.cache is None or self.lock_factory is None or ctx.no_cache:
                paid = self._call_paid(request, ctx, responder)
                if not paid.streamed:
                    send_answer(responder, request, paid.body)
                return
            self._cached_call(request, ctx, responder)
        except _ProviderFailed as failed:
            headers = {
                k: v
                for k, v in failed.headers.items()
                if k in ("content-type", "retry-after", "retry-after-ms")
            }
            secrets = self.routes.secrets()
            responder.full(
                failed.status,
                headers,
                scrub(failed.body.decode("utf-8", "replace"), secrets).encode(),
            )
        except BudgetExceeded as refused:
            line = f"BudgetExceeded: {refused}"
            ctx.notice(line)
            self._error(responder, provider, BUDGET_STATUS, line)
        except CallNotConfirmed as refused:
            line = f"CallNotConfirmed: {refused}"
            ctx.notice(line)
            self._error(responder, provider, NOT_CONFIRMED_STATUS, line)
        except OutputLimitExceeded as refused:
            line = f"OutputLimitExceeded: {refused}"
            ctx.notice(line)
            send_error(responder, provider, 400, line, param=refused.field, code="invalid_value")
        except ConnectionError as exc:
            self._error(responder, provider, 502, scrub(str(exc), self.routes.secrets()))
        except _StreamBroken:
            pass  # the stream's end frame already carried the error
        except CallCancelled:
            self._error(responder, provider, CANCELLED_STATUS, "the step was cancelled")
        except Exception as exc:
            if is_ledger_outage(exc):  # not budgeted, so not sent: a 503 the SDK retries
                self.on_ledger_outage()  # the notebook's one notice
                responder.full(*ledger_down_reply(provider))
            elif isinstance(exc, WfloError | ValueError | LockTimeout):
                self._error(responder, provider, 400, f"{type(exc).__name__}: {exc}")
            else:
                raise

    # -- the cache path ---------------------------------------------------------------------
    def _cached_call(self, request: GatewayRequest, ctx: CallContext, responder: Responder) -> None:
        assert self.cache is not None
        assert self.lock_factory is not None
        key = self._key(request, ctx)
        paid: list[_Paid] = []

        def compute() -> CachedResponse:
            result = self._call_paid(request, ctx, responder, request_hash=key.digest)
            paid.append(result)
            return CachedResponse(
                body=result.body,
                usage=asdict(result.usage),
                saved_micros=result.cost_micros,
                model=request.model,
            )

        value, was_leader = single_flight(
            self.cache,
            self.lock_factory,
            key,
            compute,
            self.flight_wait_s,
            ttl_s=_cache_ttl(request.headers),
        )
        if was_leader:
            self.cache.record_miss(key.namespace)
            if ctx.origin is not None and paid:
                self.cache.note_origin(key, ctx.origin, _cache_ttl(request.headers))
            if not (paid and paid[0].streamed):
                send_answer(responder, request, value.body)
            return
        self._serve_hit(request, ctx, responder, key, value)

    def answer_from_cache(
        self, request: GatewayRequest, ctx: CallContext, responder: Responder
    ) -> bool:
        """Answer ``request`` if the cache already holds its answer (one Redis GET, no
        lock, no wait: the channel's reading thread calls this before it hands the request
        to a worker). False, having sent nothing, for anything else: a miss, a call that
        skips the cache, an invalid request, Redis down."""
        if self.cache is None or ctx.no_cache or not request.model or request.free:
            return False
        try:
            _cache_ttl(request.headers)  # an invalid TTL header is the full path's error
            key = self._key(request, ctx)
            value = self.cache.get(key)
        except Exception:
            return False
        if value is None:
            return False
        try:
            self._serve_hit(request, ctx, responder, key, value)
        except Exception:  # answered or not, never twice: the worker path is not taken
            log.exception("LLM gateway: serving a cache hit failed")
        return True

    def cached(self, request: GatewayRequest, ctx: CallContext) -> bool:
        """Whether the cache holds an answer for ``request`` now: one lookup that stores,
        locks and counts nothing (a dry run's "answered from the cache at $0")."""
        if self.cache is None or ctx.no_cache or not request.model or request.free:
            return False
        try:
            return self.cache.get(self._key(request, ctx)) is not None
        except Exception:
            return False

    def _key(self, request: GatewayRequest, ctx: CallContext) -> CacheKey:
        return cache_key(
            provider=request.provider,
            base_url=self.routes.route(request.provider).base_url,
            endpoint=request.endpoint,
            body=request.body,
            namespace=ctx.namespace,
            headers=request.headers,
        )

    def _serve_hit(
        self,
        request: GatewayRequest,
        ctx: CallContext,
        responder: Responder,
        key: CacheKey,
        value: CachedResponse,
    ) -> None:
        assert self.cache is not None
        # Answer first: a hit moves no money, so its $0 ledger row can follow the answer.
        send_answer(responder, request, value.body)
        ctx.notice(
            f"cache hit: {request.model} answered at $0, saved {format_usd(value.saved_micros)}"
            + (" (simulated)" if self.simulated else "")
        )
        call = LlmCall(
            provider=request.provider,
            model=request.model,
            endpoint=request.endpoint,
            saved_micros=value.saved_micros,
            cached=True,
            simulated=self.simulated,
            latency_ms=0,
            request_hash=key.digest,
        )
        self.hits.record(ctx.step_id, call, key.namespace)  # group-committed, see drain

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Write the cache hits answered so far (a step calls this before it closes)."""
        return self.hits.drain(timeout_s)

    # -- the paid path ----------------------------------------------------------------------
    def _call_paid(
        self,
        request: GatewayRequest,
        ctx: CallContext,
        responder: Responder,
        request_hash: str | None = None,
    ) -> _Paid:
        provider, model, endpoint = request.provider, request.model, request.endpoint
        worst = self.prices.worst_case(provider, model, request.body, endpoint=endpoint)
        body = worst.apply_to(request.body)
        label = f"{model}, {worst.max_tokens_field}={worst.max_tokens}"
        self._confirm(ctx, label, worst)  # before the reservation: a no reserves nothing
        if request.stream and endpoint == "chat":
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        with self.inflight.call(ctx.step_id):
            return self._reserve_and_send(request, ctx, responder, body, worst, request_hash)

    def _reserve_and_send(
        self,
        request: GatewayRequest,
        ctx: CallContext,
        responder: Responder,
        body: dict[str, Any],
        worst: WorstCase,
        request_hash: str | None,
    ) -> _Paid:
        provider, model, endpoint = request.provider, request.model, request.endpoint
        wants_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
        label = f"{model}, {worst.max_tokens_field}={worst.max_tokens}"
        reservation = self.budgets.reserve(
            ctx.scopes,
            worst.micros,
            lease_s=self.lease_s,
            step_id=ctx.step_id,
            call_label=label,
        )
        started = time.monotonic()
        try:
            with self.upstream.send(
                provider,
                request.path,
                json.dumps(body).encode(),
                request.headers,
                stream=request.stream,
            ) as reply:
                if reply.status != 200 or (request.stream and reply.chunks is None):
                    raise _ProviderFailed(reply.status, reply.headers, reply.body)
                if request.stream and reply.chunks is not None:
                    full = self._relay_stream(
                        endpoint,
                        reply.chunks,
                        responder,
                        strip_usage=endpoint == "chat" and not wants_usage,
                    )
                    streamed = True
                else:
                    full = json.loads(reply.body)
                    streamed = False
            usage = normalise_usage(provider, full.get("usage") or {})
            cost = self.prices.cost_micros(provider, model, usage)
            settlement = self._settle(
                reservation,
                cost,
                LlmCall(
                    provider=provider,
                    model=model,
                    endpoint=endpoint,
                    usage=usage,
                    simulated=self.simulated,
                    latency_ms=round((time.monotonic() - started) * 1000),
                    request_hash=request_hash,
                ),
            )
        except BaseException as exc:
            self.budgets.release(reservation)
            if not isinstance(exc, _StreamBroken) and self.inflight.cancelled_here():
                raise CallCancelled("the step was cancelled") from None
            raise
        for crossed in settlement.thresholds:  # once each: only the settle that crosses it
            ctx.notice(threshold_notice(crossed.scope, crossed.threshold, crossed.state))
        return _Paid(full, usage, cost, streamed)

    def _settle(self, reservation: Reservation, cost: int, call: LlmCall) -> Settlement:
        """Settle a call the provider answered (and was paid for). While the ledger is
        unreachable (a short outage, or a pooled connection its restart left stale) the
        settle is retried for up to ``SETTLE_PATIENCE_S``: a 503 now would lose the
        record and make the SDK pay again."""
        deadline = time.monotonic() + SETTLE_PATIENCE_S
        while True:
            try:
                return self.budgets.settle(reservation, cost, call=call)
            except Exception as exc:
                if not is_ledger_outage(exc) or time.monotonic() >= deadline:
                    raise
                self.on_ledger_outage()
                time.sleep(SETTLE_RETRY_S)

    @staticmethod
    def _confirm(ctx: CallContext, label: str, worst: WorstCase) -> None:
        """``confirm_above``: a call whose worst case is above it goes on only after the
        analyst's yes (asked in the running cell); ``CallNotConfirmed`` otherwise."""
        threshold = ctx.confirm_above_micros
        if threshold is None or worst.micros <= threshold:
            return
        answer = (
            ctx.confirm(confirm_question(label, worst.micros, threshold)) if ctx.confirm else None
        )
        if answer is None:
            raise CallNotConfirmed.cannot_ask(label, worst.micros, threshold)
        if not answer:
            raise CallNotConfirmed.declined(label, worst.micros)

    @staticmethod
    def _relay_stream(
        endpoint: str, chunks: Iterable[bytes], responder: Responder, *, strip_usage: bool
    ) -> dict[str, Any]:
        """Forward a provider stream event by event while assembling the full answer."""
        parser = SseParser()
        events: list[SseEvent] = []
        responder.start(200, {"content-type": "text/event-stream"})
        try:
            for chunk in chunks:
                for event in parser.feed(chunk):
                    events.append(event)
                    if strip_usage and _usage_only_chunk(event):
                        continue  # we asked for usage; the cell did not
                    responder.chunk(event.encode())
        except Exception as exc:
            responder.end(f"the provider's stream broke off: {type(exc).__name__}")
            raise _StreamBroken from exc
        responder.end()
        return assemble(endpoint, events)

    # -- answers ---------------------------------------------------------------------------
    @staticmethod
    def _error(responder: Responder, provider: str, status: int, message: str) -> None:
        send_error(responder, provider, status, message)


def send_answer(
    responder: Responder,
    request: GatewayRequest,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer with the full ``body``: as a stream of the provider's events when the
    request asked for one (synthesised from the body), else as JSON."""
    extra = dict(headers or {})
    if request.stream and request.endpoint != "embeddings":
        wants_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
        responder.start(200, {"content-type": "text/event-stream", **extra})
        for event in synthesise(request.endpoint, body, include_usage=wants_usage):
            responder.chunk(event.encode())
        responder.end()
        return
    responder.full(200, {"content-type": "application/json", **extra}, json.dumps(body).encode())


def send_error(
    responder: Responder, provider: str, status: int, message: str, **openai: str | None
) -> None:
    """Answer with an error in the provider's own shape (``openai``: ``param``, ``code``)."""
    body = error_body(provider, status, message, **openai)
    responder.full(status, {"content-type": "application/json"}, json.dumps(body).encode())


def _cache_ttl(headers: Mapping[str, str]) -> float | None:
    """A per-call TTL from ``x-wflo-cache-ttl`` (e.g. ``extra_headers`` in the SDK)."""
    raw = headers.get("x-wflo-cache-ttl")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"x-wflo-cache-ttl: not a number of seconds: {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"x-wflo-cache-ttl: must be positive, got {raw!r}")
    return seconds


def _usage_only_chunk(event: SseEvent) -> bool:
    if not event.data.startswith("{"):
        return False
    try:
        data = json.loads(event.data)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("choices") == [] and "usage" in data
