"""Cache keys for LLM requests: a canonical request -> ``CacheKey``.

Owns what makes two requests "the same": the SHA-256 of the canonical JSON of the
whole request (provider, base URL, endpoint, answer-changing headers and the full
body), and the Redis key layout. Standard library only; no Redis here.

Key layout (every segment percent-encoded, so segments never contain ``:`` or the
Redis glob characters ``* ? [ ] \\``)::

    wflo:llm:{namespace}:{model}:{sha256 hex}

so invalidating a namespace is the SCAN pattern ``wflo:llm:{namespace}:*`` and a
model is ``wflo:llm:*:{model}:*``. Hit/miss statistics live beside the entries in
``wflo:llmstats:{namespace}`` (a hash), single-flight locks in
``wflo:lock:llm:{namespace}:{model}:{digest}``; neither matches ``wflo:llm:*``.

The namespace scopes entries: one shared namespace (``DEFAULT_NAMESPACE``) lets every
kernel reuse each other's answers (and lets single-flight span kernels); a notebook id
as the namespace keeps a notebook's entries to itself. The namespace is not part of
the digest, so the same request has the same digest in every namespace.

What is hashed: the whole body, minus ``IGNORED_BODY_FIELDS`` (top level only), which
change how an answer is delivered or labelled but never the answer itself:

* ``stream``, ``stream_options`` - transport. A streamed request is served from a
  non-streamed answer and vice versa (the gateway replays the stored body as SSE).
* ``user``, ``safety_identifier``, ``metadata`` - caller labels for abuse monitoring
  and dashboards (OpenAI ``metadata``, Anthropic ``metadata.user_id``).
* ``prompt_cache_key``, ``prompt_cache_retention`` - provider prompt-cache routing
  hints; they change price and latency of a real call, not its text.

Deliberately kept (conservative: a missed hit costs one call, a wrong hit is wrong):
``store`` (a replayed id must be stored server-side for ``previous_response_id`` to
work), ``service_tier`` (changes the price the saving is computed from), ``n``,
``logprobs``, ``max_tokens`` and friends, and nested ``cache_control`` blocks.

Normalisation: object keys are sorted, no whitespace, floats with an integral value
hash as integers (``temperature: 1`` == ``1.0``), other floats by their shortest
round-trip repr, tuples as lists; booleans stay booleans. Strings are hashed exactly
(whitespace in a prompt changes the answer). Provider names are lower-cased, the base
URL's scheme and host lower-cased and trailing slashes dropped, the endpoint given one
leading slash. ``KEY_SCHEMA_VERSION`` is hashed too, so a future change of these rules
misses old entries instead of misreading them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

KEY_PREFIX = "wflo:llm"
STATS_PREFIX = "wflo:llmstats"
ORIGIN_PREFIX = "wflo:llmorigin"
LOCK_NAME_PREFIX = "llm"
DEFAULT_NAMESPACE = "shared"
KEY_SCHEMA_VERSION = 1

IGNORED_BODY_FIELDS: frozenset[str] = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
"""Top-level body fields left out of the digest (see the module docstring)."""

ANSWER_HEADERS: frozenset[str] = frozenset({"anthropic-version", "anthropic-beta", "openai-beta"})
"""Request headers (lower-case) that select API behaviour, so they are hashed too."""

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_SAFE_INT_FLOAT = 2.0**53


def encode_segment(text: str) -> str:
    """Percent-encode one key segment: no ``:``, glob characters or whitespace remain."""
    return quote(text, safe="-._~@+=,")


def _canonical_value(value: Any) -> Any:
    """``value`` with integral floats as ints; ``_NotJson`` at the first non-JSON part (the
    hot path of every LLM call: no path strings are built unless something is wrong)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < _SAFE_INT_FLOAT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise _NotJson
            result[name] = _canonical_value(item)
        return result
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_canonical_value(item) for item in value]
    raise _NotJson


class _NotJson(Exception):
    """Raised inside ``_canonical_value``; ``_not_json_error`` says where."""


def _not_json_error(value: Any, path: str = "") -> TypeError | None:
    """The one-line ``TypeError`` for the first part of ``value`` that is not JSON."""
    if value is None or isinstance(value, bool | str | int | float):
        return None
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                return TypeError(f"cache key: {path or 'body'} has a non-string key {name!r}")
            error = _not_json_error(item, f"{path}.{name}" if path else name)
            if error is not None:
                return error
        return None
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for i, item in enumerate(value):
            error = _not_json_error(item, f"{path}[{i}]")
            if error is not None:
                return error
        return None
    return TypeError(f"cache key: {path or 'body'} is not JSON ({type(value).__name__})")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a JSON-like value (sorted keys, no whitespace,
    integral floats as integers). ``TypeError`` for anything that is not JSON."""
    try:
        canonical = _canonical_value(value)
    except _NotJson:
        raise _not_json_error(value) or TypeError("cache key: not JSON") from None
    return json.dumps(
        canonical,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=True,
    )


def normalise_base_url(base_url: str) -> str:
    """``HTTPS://API.OpenAI.com/v1/`` -> ``https://api.openai.com/v1``."""
    parts = urlsplit(base_url.strip())
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, "")
    )


def normalise_endpoint(endpoint: str) -> str:
    """``v1/chat/completions/`` -> ``/v1/chat/completions``."""
    return "/" + endpoint.strip().strip("/")


@dataclass(frozen=True)
class CacheKey:
    """Where one request's answer lives: ``wflo:llm:{namespace}:{model}:{digest}``."""

    namespace: str
    model: str
    digest: str

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("cache key: namespace is empty")
        if not self.model:
            raise ValueError("cache key: model is empty")
        if not _DIGEST_RE.match(self.digest):
            raise ValueError(f"cache key: digest is not 64 hex characters: {self.digest!r}")

    @property
    def redis_key(self) -> str:
        """The Redis key holding the cached response."""
        return ":".join(
            (KEY_PREFIX, encode_segment(self.namespace), encode_segment(self.model), self.digest)
        )

    @property
    def lock_name(self) -> str:
        """The name of the single-flight lock for this key (``RedisLock`` adds its prefix)."""
        return ":".join(
            (
                LOCK_NAME_PREFIX,
                encode_segment(self.namespace),
                encode_segment(self.model),
                self.digest,
            )
        )

    @classmethod
    def parse(cls, redis_key: str) -> CacheKey:
        """The ``CacheKey`` a Redis key names; ``ValueError`` (one line) if it is not a
        ``wflo:llm:`` entry key."""
        parts = redis_key.split(":")
        if len(parts) != 5 or ":".join(parts[:2]) != KEY_PREFIX:
            raise ValueError(f"not an LLM cache key: {redis_key!r}")
        return cls(namespace=unquote(parts[2]), model=unquote(parts[3]), digest=parts[4])


def namespace_pattern(namespace: str) -> str:
    """SCAN pattern matching every entry of ``namespace``."""
    return f"{KEY_PREFIX}:{encode_segment(namespace)}:*"


def model_pattern(model: str, namespace: str | None = None) -> str:
    """SCAN pattern matching every entry of ``model`` (in one namespace, or all)."""
    scope = "*" if namespace is None else encode_segment(namespace)
    return f"{KEY_PREFIX}:{scope}:{encode_segment(model)}:*"


def all_entries_pattern() -> str:
    """SCAN pattern matching every LLM cache entry (and nothing else)."""
    return f"{KEY_PREFIX}:*"


def stats_key(namespace: str) -> str:
    """The hash counting hits, misses and saved micros of ``namespace``. Outside the
    ``wflo:llm:`` entry space, so invalidating entries keeps the statistics."""
    return f"{STATS_PREFIX}:{encode_segment(namespace)}"


def origin_key(origin: str) -> str:
    """The set of entry keys that ``origin`` (a notebook) stored. Outside the ``wflo:llm:``
    entry space, like the statistics."""
    return f"{ORIGIN_PREFIX}:{encode_segment(origin)}"


def all_stats_pattern() -> str:
    """SCAN pattern matching every namespace's statistics hash."""
    return f"{STATS_PREFIX}:*"


def request_digest(
    *,
    provider: str,
    base_url: str,
    endpoint: str,
    body: Mapping[str, Any],
    model: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """SHA-256 hex of the canonical request (see the module docstring for what counts).

    ``model`` overrides ``body["model"]``; the resolved name is hashed as well."""
    model_name = model if model is not None else body.get("model")
    kept_headers = {
        name.lower(): value.strip()
        for name, value in (headers or {}).items()
        if name.lower() in ANSWER_HEADERS
    }
    material = {
        "v": KEY_SCHEMA_VERSION,
        "provider": provider.strip().lower(),
        "base_url": normalise_base_url(base_url),
        "endpoint": normalise_endpoint(endpoint),
        "model": model_name,
        "headers": kept_headers,
        "body": {k: v for k, v in body.items() if k not in IGNORED_BODY_FIELDS},
    }
    return hashlib.sha256(canonical_json(material).encode("ascii")).hexdigest()


def cache_key(
    *,
    provider: str,
    base_url: str,
    endpoint: str,
    body: Mapping[str, Any],
    namespace: str = DEFAULT_NAMESPACE,
    model: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> CacheKey:
    """The cache key of one LLM request.

    ``body`` is the JSON request body as the SDK sent it; ``model`` overrides
    ``body["model"]`` for APIs that name the model elsewhere (a deployment in the URL).
    ``headers`` may be the full request headers: only ``ANSWER_HEADERS`` are used.
    ``ValueError`` when there is no model; ``TypeError`` when the body is not JSON.
    """
    model_name = model if model is not None else body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("cache key: the request names no model")
    digest = request_digest(
        provider=provider,
        base_url=base_url,
        endpoint=endpoint,
        body=body,
        model=model,
        headers=headers,
    )
    return CacheKey(namespace=namespace, model=model_name, digest=digest)
