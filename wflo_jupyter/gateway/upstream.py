"""Calls to the real providers with the host's keys: routing (OpenAI, Anthropic, any
OpenAI-compatible base URL), retries with backoff that honour ``Retry-After``, and
streamed bodies passed through chunk by chunk.

Keys live here, on the host, and nowhere else: requests arriving from the sandbox carry
a per-session token that is dropped, and the provider key is added on the way out.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from wflo_jupyter.core.errors import ConfigError
from wflo_jupyter.gateway.inflight import CallCancelled, InflightCalls

# Headers a cell may choose that change how the provider answers (never credentials).
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta", "content-type")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

ENDPOINT_BY_PATH = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/responses": ("openai", "responses"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/messages": ("anthropic", "messages"),
}


@dataclass(frozen=True)
class ProviderRoute:
    """Where one provider's calls go, and the key they carry."""

    provider: str
    base_url: str  # OpenAI-style: ends in /v1; Anthropic-style: the host root
    api_key: str | None

    def url(self, path: str) -> str:
        """``path`` is the wire path (``/v1/chat/completions``)."""
        root = self.base_url.rstrip("/")
        if root.endswith("/v1") and path.startswith("/v1/"):
            return root + path[3:]
        return root + path

    def auth_headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if self.provider == "anthropic":
            return {"x-api-key": self.api_key}
        return {"authorization": f"Bearer {self.api_key}"}


@dataclass(frozen=True)
class ProviderRoutes:
    """The host's provider configuration (``OPENAI_*``, ``ANTHROPIC_*``, ``WFLO_*_BASE_URL``)."""

    routes: Mapping[str, ProviderRoute]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProviderRoutes:
        env = os.environ if env is None else env
        openai_base = env.get("WFLO_OPENAI_BASE_URL") or "https://api.openai.com/v1"
        anthropic_base = env.get("WFLO_ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        for variable, value in (
            ("WFLO_OPENAI_BASE_URL", openai_base),
            ("WFLO_ANTHROPIC_BASE_URL", anthropic_base),
        ):
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{variable}: {value!r} is not an http(s) URL")
        return cls(
            {
                "openai": ProviderRoute("openai", openai_base, env.get("OPENAI_API_KEY") or None),
                "anthropic": ProviderRoute(
                    "anthropic", anthropic_base, env.get("ANTHROPIC_API_KEY") or None
                ),
            }
        )

    def route(self, provider: str) -> ProviderRoute:
        try:
            return self.routes[provider]
        except KeyError:
            raise ConfigError(f"no route for provider {provider!r}") from None

    def secrets(self) -> list[str]:
        """Every configured key (for scrubbing anything that leaves the host)."""
        return [r.api_key for r in self.routes.values() if r.api_key]


@dataclass
class UpstreamResponse:
    """A provider's answer: status, headers and either a body or a chunk iterator."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: Iterator[bytes] | None = None
    attempts: int = 1
    retry_waits: list[float] = field(default_factory=list)


def retry_after_seconds(headers: Mapping[str, str], cap_s: float) -> float | None:
    """Seconds the provider asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            return min(cap_s, max(0.0, float(raw) * scale))
        except ValueError:
            continue
    return None


class Upstream:
    """Sends requests to providers with retries; built with an ``httpx.Client``."""

    def __init__(
        self,
        routes: ProviderRoutes,
        client: httpx.Client | None = None,
        *,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        inflight: InflightCalls | None = None,
    ) -> None:
        self.routes = routes
        self.inflight = inflight  # a cancelled step's call is cut off, never retried
        self.client = client or httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self._sleep = sleep

    def close(self) -> None:
        self.client.close()

    def _request(
        self, provider: str, path: str, body: bytes, headers: Mapping[str, str], method: str
    ) -> httpx.Request:
        route = self.routes.route(provider)
        outgoing = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        if method == "GET":
            outgoing = {k: v for k, v in outgoing.items() if k.lower() != "content-type"}
            body = b""
        else:
            outgoing.setdefault("content-type", "application/json")
        if provider == "anthropic":
            outgoing.setdefault("anthropic-version", "2023-06-01")
        outgoing.update(route.auth_headers())
        return self.client.build_request(
            method, route.url(path), content=body or None, headers=outgoing
        )

    def _wait(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        asked = retry_after_seconds(headers or {}, self.max_wait_s)
        if asked is not None:
            return asked
        jitter = 0.5 + random.random() / 2
        return float(min(self.max_wait_s, self.backoff_s * (2.0**attempt) * jitter))

    @contextmanager
    def send(
        self,
        provider: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool = False,
        method: str = "POST",
    ) -> Iterator[UpstreamResponse]:
        """POST (or ``method``: GET for the free ``/v1/models`` routes, no body) to the
        provider. With ``stream`` the response's ``chunks`` yield the body as it arrives
        (retries happen only before the first byte)."""
        waits: list[float] = []
        attempt = 0
        while True:
            request = self._request(provider, path, body, headers, method)
            try:
                response = self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                if self.inflight is not None and self.inflight.cancelled_here():
                    raise CallCancelled("the step was cancelled") from None
                if attempt >= self.max_retries:
                    raise ConnectionError(f"{provider}: {type(exc).__name__}: {exc}") from None
                waits.append(self._wait(attempt, None))
                self._sleep(waits[-1])
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                response.read()
                response.close()
                waits.append(self._wait(attempt, response.headers))
                self._sleep(waits[-1])
                attempt += 1
                continue
            try:
                result = UpstreamResponse(
                    status=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    attempts=attempt + 1,
                    retry_waits=waits,
                )
                if stream and response.status_code == 200:
                    result.chunks = response.iter_bytes()
                else:
                    result.body = response.read()
                yield result
            finally:
                response.close()
            return


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced, for errors that travel to the sandbox."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def error_body(
    provider: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error in the provider's own shape, so SDK code in the cell handles it normally
    (``param`` / ``code``: OpenAI's fields, e.g. ``max_tokens`` / ``invalid_value``)."""
    if provider == "anthropic":
        kind = {
            400: "invalid_request_error",
            402: "billing_error",
            429: "rate_limit_error",
            502: "api_error",
            503: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = {
        400: "invalid_request_error",
        402: "insufficient_quota",
        429: "rate_limit_exceeded",
        502: "api_error",
    }.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or kind}}
