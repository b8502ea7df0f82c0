"""Where prices come from, and what a request may cost at worst before it is sent.

Owns:

- ``PriceBook``: a model's ``core.pricing.Price`` from user overrides
  (``%config WfloMagics.prices``, then ``WFLO_PRICE_OVERRIDES``) or else genai-prices'
  bundled data (tiered long-context prices resolved by the call's prompt size), the cost
  of a call's normalised usage, and the **worst case** of a request: the amount the
  gateway reserves before calling the provider. An unknown model raises
  ``UnknownModelPrice`` (never a silent $0). A request whose ``max_tokens`` is above the
  model's output limit (``ledger.model_limits``) raises ``OutputLimitExceeded``; one
  without a ``max_tokens`` is reserved (and sent) at that limit, or at
  ``DEFAULT_MAX_TOKENS_CAP`` for a model whose limit is unknown.

Overrides may carry ``max_output_tokens`` per model (alone, to change only the limit).

The prompt's upper bound comes from ``ledger.tokens.TokenCounter``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from wflo_jupyter.core.errors import ConfigError, OutputLimitExceeded
from wflo_jupyter.core.pricing import (
    Price,
    UnknownModelPrice,
    Usage,
    cost_micros,
    worst_case_cost_micros,
)
from wflo_jupyter.ledger.model_limits import LIMIT_KEY, OutputLimits, parse_limit_overrides
from wflo_jupyter.ledger.tokens import TokenCounter

__all__ = [
    "DEFAULT_MAX_TOKENS_CAP",
    "PriceBook",
    "UnknownModelPrice",
    "WorstCase",
    "parse_price_overrides",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_CAP = 4096
PRICE_OVERRIDES_ENV = "WFLO_PRICE_OVERRIDES"

# genai-prices price keys -> Price fields
_PRICE_KEYS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
}

_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_output_tokens", "max_tokens")


# -- overrides ----------------------------------------------------------------------------------
def _raw_overrides(value: str | Mapping[str, Any] | None, source: str) -> Mapping[str, Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            raw = json.loads(value, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not JSON: {exc}") from None
    else:
        raw = value
    if not isinstance(raw, Mapping):
        raise ConfigError(f'{source}: expected {{"model": {{"input": ..., "output": ...}}}}')
    return raw


def parse_price_overrides(value: str | Mapping[str, Any] | None, source: str) -> dict[str, Price]:
    """``{"model": {"input": 0.15, "output": 0.60, ...}}`` (USD per million tokens) as
    JSON text or a mapping -> ``{model: Price}``; ``ConfigError`` naming ``source``. A
    ``max_output_tokens`` key is the model's output limit (``parse_limit_overrides``), not
    a price: a spec with only that key sets no price."""
    raw = _raw_overrides(value, source)
    prices: dict[str, Price] = {}
    for model, spec in raw.items():
        if isinstance(spec, Price):
            prices[str(model).lower()] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{source}: price for {model!r} must be an object")
        price_spec = {k: v for k, v in spec.items() if k != LIMIT_KEY}
        if not price_spec and LIMIT_KEY in spec:
            continue
        try:
            prices[str(model).lower()] = Price.from_mapping(str(model), price_spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return prices


def _limit_overrides(value: str | Mapping[str, Any] | None, source: str) -> dict[str, int]:
    return parse_limit_overrides(_raw_overrides(value, source), source)


# -- worst case ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorstCase:
    """The most a request can cost, and what the gateway must send to keep it so."""

    micros: int
    input_tokens: int
    max_output_tokens: int  # max_tokens x n (every choice may use all of them)
    max_tokens: int  # the per-choice cap the provider enforces
    max_tokens_field: str  # the request field that carries it
    capped: bool  # True when the request set no cap: the gateway must send ``max_tokens``
    tokenizer: str  # tiktoken encoding name, or "utf8-bytes"

    def apply_to(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` with the cap set when the request had none (a new dict)."""
        out = dict(body)
        if self.capped:
            out[self.max_tokens_field] = self.max_tokens
        return out


def _max_tokens_of(body: Mapping[str, Any]) -> tuple[int | None, str | None]:
    for field in _MAX_TOKEN_FIELDS:
        value = body.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
            return value, field
    return None, None


def _cap_field(provider: str, body: Mapping[str, Any], endpoint: str | None) -> str:
    if provider == "anthropic":
        return "max_tokens"
    if "input" in body and "messages" not in body and not _is_embeddings(endpoint):
        return "max_output_tokens"  # OpenAI Responses API
    if provider == "openai":
        return "max_completion_tokens"  # o-series refuse max_tokens
    return "max_tokens"  # OpenAI-compatible servers


def _is_embeddings(endpoint: str | None) -> bool:
    return bool(endpoint) and "embedding" in str(endpoint)


# -- the price book -----------------------------------------------------------------------------
class PriceBook:
    """Prices by model: ``overrides`` first, then ``WFLO_PRICE_OVERRIDES``, then genai-prices."""

    def __init__(
        self,
        overrides: Mapping[str, Price | Mapping[str, Any]] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
        counter: TokenCounter | None = None,
        use_genai_prices: bool = True,
    ) -> None:
        env = os.environ if env is None else env
        if isinstance(max_tokens_cap, bool) or not isinstance(max_tokens_cap, int):
            raise ConfigError(f"max_tokens cap must be an integer, got {max_tokens_cap!r}")
        if max_tokens_cap <= 0:
            raise ConfigError(f"max_tokens cap must be positive, got {max_tokens_cap}")
        self.max_tokens_cap = max_tokens_cap
        self.counter = counter if counter is not None else TokenCounter()
        self._use_genai = use_genai_prices
        self._env_prices = parse_price_overrides(env.get(PRICE_OVERRIDES_ENV), PRICE_OVERRIDES_ENV)
        self.limits = OutputLimits()
        self.limits.set_overrides({}, _limit_overrides(env.get(PRICE_OVERRIDES_ENV), "env"))
        self.set_overrides(overrides)

    def set_overrides(self, overrides: Mapping[str, Price | Mapping[str, Any]] | None) -> None:
        """Replace the ``%config WfloMagics.prices`` overrides (prices and output limits)."""
        source = "%config WfloMagics.prices"
        self._user_prices = parse_price_overrides(overrides, source)
        self.limits.set_overrides(_limit_overrides(overrides, source))

    # prices ----------------------------------------------------------------------------------
    def _override(self, provider: str | None, model: str) -> Price | None:
        lowered = model.lower()
        keys = [f"{provider.lower()}/{lowered}"] if provider else []
        keys.append(lowered)
        for table in (self._user_prices, self._env_prices):
            for key in keys:
                if key in table:
                    return table[key]
        return None

    def price(self, provider: str | None, model: str, *, input_tokens: int | None = None) -> Price:
        """The price of ``model``; long-context tiers are chosen by ``input_tokens`` (the
        call's whole prompt), or the dearest tier when it is not known."""
        override = self._override(provider, model)
        if override is not None:
            return override
        if not self._use_genai:
            raise UnknownModelPrice(model, provider)
        return self._genai_price(provider, model, input_tokens)

    def _worst_price(self, provider: str, model: str, input_tokens: int) -> Price:
        override = self._override(provider, model)
        if override is not None:
            return override
        if not self._use_genai:
            raise UnknownModelPrice(model, provider)
        return self._genai_price(provider, model, input_tokens, worst=True)

    def _genai_price(
        self, provider: str | None, model: str, input_tokens: int | None, *, worst: bool = False
    ) -> Price:
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        provider_id = provider.lower() if provider else None
        try:
            _, info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            if provider_id is None:
                raise UnknownModelPrice(model, provider) from None
            try:  # an OpenAI-compatible server (or the mock) serving a known model
                _, info = snapshot.find_provider_model(model, None, None, None)
            except LookupError:
                raise UnknownModelPrice(model, provider) from None
        model_price = info.get_prices(datetime.now(tz=UTC))
        values: dict[str, Decimal | None] = {}
        for field, key in _PRICE_KEYS.items():
            raw = getattr(model_price, key, None)
            values[field] = None if raw is None else _tier_price(raw, input_tokens, worst=worst)
        if values["input"] is None:
            raise UnknownModelPrice(model, provider)
        return Price.from_usd_per_mtok(
            input=values["input"],
            output=values["output"] if values["output"] is not None else Decimal(0),
            cache_read=values["cache_read"],
            cache_write=values["cache_write"],
            cache_write_1h=values["cache_write_1h"],
        )

    # costs -----------------------------------------------------------------------------------
    def cost_micros(self, provider: str | None, model: str, usage: Usage) -> int:
        """What ``usage`` of ``model`` costs, rounded up to a whole micro-dollar."""
        return cost_micros(usage, self.price(provider, model, input_tokens=usage.total_input))

    def estimate_input_tokens(
        self,
        provider: str,
        model: str,
        request_body: Mapping[str, Any],
        *,
        endpoint: str | None = None,
    ) -> int:
        return self.counter.count(provider, model, request_body, endpoint)[0]

    def worst_case(
        self,
        provider: str,
        model: str,
        request_body: Mapping[str, Any],
        *,
        endpoint: str | None = None,
    ) -> WorstCase:
        """Upper bound of the call's cost: prompt estimate x the dearest input price plus
        ``max_tokens`` x ``n`` x the output price (reasoning is output). A ``max_tokens``
        above the model's output limit raises ``OutputLimitExceeded``; without one the
        model's limit (or the configured cap when it is unknown) is used and must be sent
        (``WorstCase.capped``)."""
        provider = provider.lower()
        given, field = _max_tokens_of(request_body)
        limit = None if _is_embeddings(endpoint) else self.limits.limit(provider, model)
        if given is not None and limit is not None and given > limit.tokens:
            raise OutputLimitExceeded(
                field or "max_tokens", given, model, limit.tokens, exact=limit.exact
            )
        input_tokens, tokenizer = self.counter.count(provider, model, request_body, endpoint)
        if _is_embeddings(endpoint):
            max_tokens, field, capped = 0, field or "max_tokens", False
        elif given is None:
            if limit is None:
                default = self.max_tokens_cap
            elif limit.exact:
                default = limit.tokens
            else:
                default = min(self.max_tokens_cap, limit.tokens)
            max_tokens, field, capped = default, _cap_field(provider, request_body, endpoint), True
        else:
            max_tokens, capped = given, False
        choices = request_body.get("n") or 1
        if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
            raise ValueError(f"n must be a positive integer, got {choices!r}")
        max_output = max_tokens * choices
        price = self._worst_price(provider, model, input_tokens)
        writes, writes_1h = _cache_writes(provider, request_body)
        return WorstCase(
            micros=worst_case_cost_micros(
                input_tokens, max_output, price, cache_write=writes, cache_write_1h=writes_1h
            ),
            input_tokens=input_tokens,
            max_output_tokens=max_output,
            max_tokens=max_tokens,
            max_tokens_field=field or "max_tokens",
            capped=capped,
            tokenizer=tokenizer,
        )

    def worst_case_micros(
        self,
        provider: str,
        model: str,
        request_body: Mapping[str, Any],
        *,
        endpoint: str | None = None,
    ) -> tuple[int, int]:
        """``(worst-case micro-dollars, max_tokens to send)``."""
        worst = self.worst_case(provider, model, request_body, endpoint=endpoint)
        return worst.micros, worst.max_tokens


def _tier_price(raw: Any, input_tokens: int | None, *, worst: bool = False) -> Decimal:
    """A genai-prices price (``Decimal`` or ``TieredPrices``) for a prompt of
    ``input_tokens``: the tier whose start it exceeds (genai-prices' cliff rule), or the
    dearest when it is not known. With ``worst``, ``input_tokens`` is an upper bound and
    the dearest of every tier a prompt up to that size can fall in is used."""
    if isinstance(raw, Decimal):
        return raw
    base = Decimal(raw.base)
    tiers = sorted(raw.tiers, key=lambda t: t.start)
    if input_tokens is None:
        return max([base, *(Decimal(t.price) for t in tiers)])
    reachable = [Decimal(t.price) for t in tiers if input_tokens > t.start]
    if worst:
        return max([base, *reachable])
    return reachable[-1] if reachable else base


def _cache_writes(provider: str, body: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether the request can be billed cache writes (5-minute, 1-hour): only Anthropic
    bills them, and only for requests that carry ``cache_control``."""
    if provider != "anthropic":
        return False, False
    found: list[Mapping[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            control = value.get("cache_control")
            if isinstance(control, Mapping):
                found.append(control)
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(body)
    return bool(found), any(str(c.get("ttl", "")) == "1h" for c in found)
