"""``FreeCalls``: the provider endpoints nothing is billed for, on the host.

Anthropic's ``POST /v1/messages/count_tokens`` and both APIs' ``GET /v1/models`` /
``GET /v1/models/{id}`` (``llm_routes.FREE_ENDPOINTS``; the frame was validated by
``gateway.channel``). They skip the budget path entirely: no estimate, no reservation,
no cache. The call goes to the provider with the host's key (``WFLO_PROVIDER=mock``:
answered locally by ``gateway.free_mock``); the provider's answer, an error included,
passes through in its own shape with every key scrubbed; and a 200 is recorded as one
$0 ``llm_calls`` row (usage 0 tokens, endpoint ``count_tokens`` or ``models``) with its
``llm.call`` event, so reports show the call.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from wflo_jupyter.gateway import free_mock
from wflo_jupyter.gateway.upstream import ProviderRoutes, error_body, scrub
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.tokens import TokenCounter
from wflo_jupyter.sandbox.agent.llm_routes import MODELS_PATH

if TYPE_CHECKING:
    from wflo_jupyter.gateway.service import CallContext, GatewayRequest, Responder, UpstreamLike

log = logging.getLogger(__name__)

PASSED_HEADERS = ("content-type", "retry-after", "retry-after-ms", "request-id", "x-request-id")
MODEL_LIST = "(model list)"
"""The ``model`` of a models-list call's ledger row (it names no model)."""


def ledger_model(request: GatewayRequest) -> str:
    """What the call's ledger row names as its model."""
    if request.endpoint == "models":
        prefix = MODELS_PATH + "/"
        path = request.path.split("?", 1)[0]
        return path[len(prefix) :] if path.startswith(prefix) else MODEL_LIST
    return request.model or "unknown-model"


class FreeCalls:
    """Answers and records the free calls of one gateway."""

    def __init__(
        self,
        routes: ProviderRoutes,
        upstream: UpstreamLike,
        budgets: BudgetLedger,
        counter: TokenCounter,
        *,
        simulated: bool = False,
    ) -> None:
        self.routes = routes
        self.upstream = upstream
        self.budgets = budgets
        self.counter = counter
        self.simulated = simulated

    def handle(self, request: GatewayRequest, ctx: CallContext, responder: Responder) -> None:
        """Answer ``request`` (never raises for the provider's failures) and record it."""
        provider = request.provider
        started = time.monotonic()
        if self.simulated:
            status, body = free_mock.answer(request, self.counter)
            headers = {"content-type": "application/json", free_mock.SIMULATED_HEADER: "true"}
            raw = json.dumps(body).encode()
        else:
            payload = json.dumps(request.body).encode() if request.method == "POST" else b""
            try:
                with self.upstream.send(
                    provider, request.path, payload, request.headers, method=request.method
                ) as reply:
                    status, raw = reply.status, reply.body
                    headers = {k: v for k, v in reply.headers.items() if k in PASSED_HEADERS}
            except ConnectionError as exc:
                message = scrub(str(exc), self.routes.secrets())
                raw = json.dumps(error_body(provider, 502, message)).encode()
                responder.full(502, {"content-type": "application/json"}, raw)
                return
            raw = scrub(raw.decode("utf-8", "replace"), self.routes.secrets()).encode()
        responder.full(status, headers, raw)
        if status == 200:
            self._record(request, ctx, round((time.monotonic() - started) * 1000))

    def _record(self, request: GatewayRequest, ctx: CallContext, latency_ms: int) -> None:
        call = LlmCall(
            provider=request.provider,
            model=ledger_model(request),
            endpoint=request.endpoint,
            simulated=self.simulated,
            latency_ms=latency_ms,
        )
        try:  # answered already: a lost row must not fail the call
            self.budgets.record_cached_calls([(ctx.step_id, call)])
        except Exception as exc:
            log.error("could not record a free %s call: %s", request.endpoint, exc)
