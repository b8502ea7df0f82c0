"""Which HTTP requests the sandbox's loopback LLM proxy forwards (stdlib only, both sides).

Used by the agent (``LlmProxy`` asks ``resolve`` for every request) and by the host
(``gateway.channel`` asks it again for every ``llm_request`` frame, which is untrusted):
the same request gets the same route, or the same refusal, on both sides.

- ``POST`` on ``protocol.LLM_ROUTES`` (with or without ``/v1``; a query string is ignored):
  the billed calls, and Anthropic's free ``/v1/messages/count_tokens``.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: free, either API. The path is the same
  for both SDKs, so the provider comes from the SDK's headers (``provider_from_headers``:
  Anthropic's sends ``anthropic-version`` and ``x-api-key``, OpenAI's a bearer token) and
  travels in the frame. A model id is percent-decoded once and must then be 1 to
  ``MODEL_ID_MAX`` characters of ``[A-Za-z0-9._:-]`` starting with a letter or digit, so
  no id can name another upstream path (``..``, ``/``, ``%2e%2e``, ``?`` never pass).
  Only Anthropic's list query survives (``limit`` 1-1000, ``after_id`` / ``before_id``
  model ids; other names are dropped), rebuilt in a fixed order; OpenAI's has none.

A refusal is ``RouteRefused`` with the status to answer (404 unknown path, 405 wrong
method, 400 invalid id or query).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qsl, quote, unquote

if TYPE_CHECKING or __package__:
    from . import protocol
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    protocol = load("protocol")

MODELS_PATH = "/v1/models"
MODEL_ID_MAX = 128
"""Longest model id a path (or a list cursor) may carry."""
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # MODEL_ID_MAX characters
LIST_LIMIT_MAX = 1000
FREE_ENDPOINTS = frozenset({"count_tokens", "models"})
"""Endpoints nothing is billed for: not budgeted, not cached, recorded at $0."""
PROVIDERS = ("openai", "anthropic")


class Route(NamedTuple):
    provider: str  # "openai" | "anthropic"
    endpoint: str  # "chat" | "responses" | "embeddings" | "messages" | "count_tokens" | "models"
    method: str  # "POST" | "GET"
    path: str  # the canonical target sent upstream (a models list may carry its query)
    model: str | None = None  # the id of ``GET /v1/models/{id}``


class RouteRefused(Exception):
    """The request is not one the proxy forwards; ``status`` is the answer's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def provider_from_headers(header: Callable[[str], str | None]) -> str:
    """Whose API a ``GET /v1/models`` is for, from the request's headers."""
    if header("anthropic-version") is not None or header("x-api-key") is not None:
        return "anthropic"
    return "openai"


def valid_model_id(value: str) -> bool:
    return MODEL_ID.fullmatch(value) is not None


def resolve(method: str, target: str, provider: str) -> Route:
    """The route of ``method`` on ``target`` (a request target: path and query), or
    ``RouteRefused``. ``provider`` decides the models routes (``provider_from_headers``)."""
    bare, _, query = target.split("#", 1)[0].partition("?")
    bare = bare.rstrip("/")
    canonical = bare if bare.startswith("/v1/") else "/v1" + bare
    posted = protocol.llm_route(bare)
    models = canonical == MODELS_PATH or canonical.startswith(MODELS_PATH + "/")
    if method not in ("GET", "POST"):
        raise RouteRefused(405, f"{method} is not supported; LLM calls are POST")
    if method == "POST" and posted is not None:
        return Route(posted[0], posted[1], "POST", posted[2])
    if method == "GET" and models:
        if provider not in PROVIDERS:
            raise RouteRefused(400, f"unknown provider {provider!r}")
        if canonical == MODELS_PATH:
            return Route(provider, "models", "GET", MODELS_PATH + _list_query(provider, query))
        try:
            model = unquote(canonical[len(MODELS_PATH) + 1 :], errors="strict")
        except UnicodeDecodeError:
            model = canonical[len(MODELS_PATH) + 1 :]
        if not valid_model_id(model):
            raise RouteRefused(
                400,
                f"invalid model id {model[:80]!r}: up to {MODEL_ID_MAX} characters of "
                "letters, digits and . _ : - (starting with a letter or digit)",
            )
        return Route(provider, "models", "GET", f"{MODELS_PATH}/{model}", model)
    if method == "GET" and posted is not None:
        raise RouteRefused(405, "GET is not supported; LLM calls are POST")
    served = ", ".join([*protocol.LLM_ROUTES, f"GET {MODELS_PATH}[/{{id}}]"])
    raise RouteRefused(404, f"{target[:200]} is not served by the wflo sandbox (only {served})")


def _list_query(provider: str, query: str) -> str:
    """The list's query, validated and rebuilt (Anthropic's cursors; OpenAI has none)."""
    if provider != "anthropic" or not query:
        return ""
    kept: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "limit":
            if not (value.isascii() and value.isdigit() and 1 <= int(value) <= LIST_LIMIT_MAX):
                raise RouteRefused(400, f"limit must be 1 to {LIST_LIMIT_MAX}, got {value[:20]!r}")
        elif name in ("after_id", "before_id"):
            if not valid_model_id(value):
                raise RouteRefused(400, f"{name}: invalid model id {value[:80]!r}")
        else:
            continue
        kept[name] = value
    order = [n for n in ("limit", "after_id", "before_id") if n in kept]
    return ("?" + "&".join(f"{n}={quote(kept[n], safe='')}" for n in order)) if order else ""
