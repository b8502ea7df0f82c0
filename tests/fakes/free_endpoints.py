"""The fake provider's free endpoints, in the real wire formats: OpenAI's and Anthropic's
``GET /v1/models`` and ``GET /v1/models/{id}`` (which API is asked is read from the
request's headers, as on the real hosts' shared path), and Anthropic's
``POST /v1/messages/count_tokens``. Hooked into ``providers._Handler`` by two calls.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.providers import _Handler

OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o3-mini")
ANTHROPIC_MODELS = ("claude-3-5-haiku-latest", "claude-sonnet-4-5", "claude-opus-4-1")
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def count_tokens(body: dict[str, Any]) -> int:
    """The fake's count: one token per 4 characters of the messages and system prompt."""
    return max(1, len(json.dumps([body.get("system"), body.get("messages")])) // 4)


def _model(anthropic: bool, model: str) -> dict[str, Any]:
    if anthropic:
        return {
            "type": "model",
            "id": model,
            "display_name": model.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
        }
    return {"id": model, "object": "model", "created": 1_735_689_600, "owned_by": "system"}


def serve_post(handler: _Handler, body: dict[str, Any]) -> bool:
    """Answer ``POST /v1/messages/count_tokens``; False for every other path."""
    if handler.path.split("?", 1)[0] != COUNT_TOKENS_PATH:
        return False
    handler._send_json(200, {"input_tokens": count_tokens(body)})
    return True


def serve_get(handler: _Handler) -> None:
    """Answer a ``GET`` (recorded like every request; ``fail_next`` applies)."""
    from tests.fakes.providers import RecordedRequest

    state = handler.server.state
    headers = {k.lower(): v for k, v in handler.headers.items()}
    with state.lock:
        state.requests.append(RecordedRequest("GET", handler.path, headers, {}))
        failure = state.failures.pop(0) if state.failures else None
    anthropic = "anthropic-version" in headers or "x-api-key" in headers
    path = handler.path.split("?", 1)[0]
    models = ANTHROPIC_MODELS if anthropic else OPENAI_MODELS
    if failure is not None:
        handler._send_json(failure.status, _error(anthropic, failure.status, failure.message))
    elif path == "/v1/models":
        data = [_model(anthropic, m) for m in models]
        if anthropic:
            handler._send_json(
                200,
                {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]},
            )
        else:
            handler._send_json(200, {"object": "list", "data": data})
    elif path.startswith("/v1/models/") and path[len("/v1/models/") :] in models:
        handler._send_json(200, _model(anthropic, path[len("/v1/models/") :]))
    else:
        handler._send_json(404, _error(anthropic, 404, f"no such model or route: {path}"))


def _error(anthropic: bool, status: int, message: str) -> dict[str, Any]:
    if anthropic:
        kind = {404: "not_found_error", 429: "rate_limit_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    code = {404: "model_not_found", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
