"""The offline mock's answers to the free endpoints (``WFLO_PROVIDER=mock``), in the
providers' real shapes, labelled simulated like every mock answer.

- ``count_tokens``: ``{"input_tokens": N}``, N counted by the ledger's tokenizer exactly
  as ``PriceBook.worst_case`` counts the same body's prompt.
- ``models`` list: the models ``ledger/model_limits.json`` knows for the provider (display
  names from genai-prices), as OpenAI's ``{"object": "list", "data": [...]}`` or
  Anthropic's paged ``{"data", "has_more", "first_id", "last_id"}`` (``limit``,
  ``after_id``, ``before_id`` honoured).
- ``models/{id}``: one of those (a dated snapshot of one too), else the provider's 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from wflo_jupyter.gateway.mock import SIMULATED_HEADER
from wflo_jupyter.ledger.model_limits import max_output_tokens, table_models
from wflo_jupyter.ledger.tokens import TokenCounter
from wflo_jupyter.sandbox.agent.llm_routes import MODELS_PATH

if TYPE_CHECKING:
    from wflo_jupyter.gateway.service import GatewayRequest

__all__ = ["SIMULATED_HEADER", "answer"]

CREATED = 1_700_000_000
"""The ``created`` time of every simulated model (2023-11-14T22:13:20Z)."""
DEFAULT_PAGE = 20


def answer(request: GatewayRequest, counter: TokenCounter) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of a free call, without the network."""
    provider = request.provider
    if request.endpoint == "count_tokens":
        if not request.model:
            return 400, _error(provider, 400, "model: Field required")
        tokens, _ = counter.count(provider, request.model, request.body, "messages")
        return 200, {"input_tokens": tokens}
    path, _, query = request.path.partition("?")
    if path == MODELS_PATH:
        return 200, _list(provider, dict(parse_qsl(query)))
    model = path[len(MODELS_PATH) + 1 :]
    if model in table_models(provider) or max_output_tokens(provider, model) is not None:
        return 200, _model(provider, model)
    if provider == "anthropic":
        return 404, _error(provider, 404, f"model: {model}")
    return 404, _error(
        provider, 404, f"The model '{model}' does not exist or you do not have access to it."
    )


def _model(provider: str, model: str) -> dict[str, Any]:
    if provider == "anthropic":
        created = datetime.fromtimestamp(CREATED, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "type": "model",
            "id": model,
            "display_name": _display_name(model),
            "created_at": created,
        }
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


def _list(provider: str, query: dict[str, str]) -> dict[str, Any]:
    models = table_models(provider)
    if provider != "anthropic":
        return {"object": "list", "data": [_model(provider, m) for m in models]}
    limit = int(query.get("limit") or DEFAULT_PAGE)
    start, end = 0, len(models)
    if query.get("after_id") in models:
        start = models.index(query["after_id"]) + 1
    if query.get("before_id") in models:
        end = models.index(query["before_id"])
        start = max(start, end - limit)
    page = models[start:end][:limit]
    return {
        "data": [_model(provider, m) for m in page],
        "has_more": start + len(page) < end,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }


def _display_name(model: str) -> str:
    from genai_prices import data_snapshot

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, "anthropic", None)
    except LookupError:
        return model
    return str(info.name or model)


def _error(provider: str, status: int, message: str) -> dict[str, Any]:
    if provider == "anthropic":
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    code = "model_not_found" if status == 404 else None
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "model" if status == 404 else None,
            "code": code,
        }
    }
