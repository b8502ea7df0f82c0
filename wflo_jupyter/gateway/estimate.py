"""``EstimateGateway``: the LLM calls of a ``%%wflo --estimate`` dry run.

Each call is priced at its worst case (``PriceBook.worst_case``, as the real gateway
reserves it) and counted in the step's ``EstimateTally``, then answered at once with a
placeholder in the provider's own shape (``MockUpstream``'s bodies, streams synthesised
as for a cache hit) whose text says it is an estimate placeholder, and the header
``x-wflo-estimate: true``. Nothing is reserved, no provider is contacted, nothing is
stored in the cache or written to the ledger. A model without a price is counted as such
(the report names it) and still answered, so the dry run sees every call. A call the real
run would refuse before reserving (``OutputLimitExceeded``: ``max_tokens`` above the
model's output limit) gets the same 400 and is reported as refused, not priced. The free
endpoints (``count_tokens``, ``models``) get the offline mock's answers and are not counted.
"""

from __future__ import annotations

import json

from wflo_jupyter.core.errors import OutputLimitExceeded
from wflo_jupyter.core.estimates import EstimateTally, placeholder_text
from wflo_jupyter.core.pricing import UnknownModelPrice
from wflo_jupyter.gateway import free_mock
from wflo_jupyter.gateway.mock import MockUpstream
from wflo_jupyter.gateway.service import (
    CallContext,
    GatewayRequest,
    LlmGateway,
    Responder,
    send_answer,
    send_error,
)

ESTIMATE_HEADER = "x-wflo-estimate"


class EstimateGateway:
    """Answers a dry run's calls (same ``handle`` / ``answer_from_cache`` as ``LlmGateway``)."""

    def __init__(self, gateway: LlmGateway, tally: EstimateTally) -> None:
        self.gateway = gateway
        self.prices = gateway.prices
        self.tally = tally
        counter = gateway.prices.counter
        self.mock = MockUpstream(
            lambda provider, model, body: counter.count(provider, model, body)[0]
        )

    def answer_from_cache(
        self, request: GatewayRequest, ctx: CallContext, responder: Responder
    ) -> bool:
        """Never: every call of a dry run gets a placeholder (a cache hit would write a
        ledger row)."""
        return False

    def handle(self, request: GatewayRequest, ctx: CallContext, responder: Responder) -> None:
        provider, model = request.provider, request.model
        if request.free:
            status, free = free_mock.answer(request, self.prices.counter)
            headers = {"content-type": "application/json", ESTIMATE_HEADER: "true"}
            responder.full(status, headers, json.dumps(free).encode())
            return
        if not model:
            send_error(responder, provider, 400, "you must provide a model parameter")
            return
        try:
            worst: int | None = self.prices.worst_case(
                provider, model, request.body, endpoint=request.endpoint
            ).micros
        except UnknownModelPrice:
            worst = None
        except OutputLimitExceeded as refused:
            line = f"OutputLimitExceeded: {refused}"
            self.tally.refuse(line)
            send_error(responder, provider, 400, line, param=refused.field, code="invalid_value")
            return
        except ValueError as exc:  # the real call would be refused the same way
            send_error(responder, provider, 400, f"{type(exc).__name__}: {exc}")
            return
        self.tally.add(model, worst, cached=self.gateway.cached(request, ctx))
        body = self.mock.answer(
            provider, request.endpoint, request.body, text=placeholder_text(model, worst)
        )
        send_answer(responder, request, body, {ESTIMATE_HEADER: "true"})
