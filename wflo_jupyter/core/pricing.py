"""Pricing arithmetic: normalised token usage, per-kind prices, exact cost in micro-dollars.

Owns what a token costs once its kind is known, and what a CPU-second of sandbox compute
costs (``compute_cost_micros``). Pure standard library: where prices come
from (genai-prices, user overrides) is ``ledger.pricing``; this module only does the
arithmetic and the provider-specific *normalisation* of reported usage.

Normalised usage (``Usage``) splits a call's tokens into disjoint billing kinds:

- ``input``: prompt tokens billed at the full input price (neither read from nor
  written to a prompt cache);
- ``cache_read``: prompt tokens served from the provider's prompt cache;
- ``cache_write``: prompt tokens written to the cache (Anthropic's default 5-minute
  writes; OpenAI does not bill cache writes);
- ``cache_write_1h``: Anthropic's 1-hour cache writes (a higher price);
- ``output``: every generated token, **reasoning included**;
- ``reasoning``: the part of ``output`` spent on hidden reasoning. It is recorded for
  reports and never billed a second time: OpenAI counts reasoning tokens inside
  ``completion_tokens`` / ``output_tokens`` and bills them at the output price, and
  Anthropic counts extended-thinking tokens inside ``output_tokens``.

Money is integer micro-dollars. Prices are micro-dollars per million tokens (``int`` or
``Decimal``; ``$0.15`` per million tokens is ``150_000``). A call's cost is computed
exactly (rational arithmetic) and rounded **up** to a whole micro-dollar, so a recorded
cost is never below the provider's bill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from fractions import Fraction
from typing import Any

from wflo_jupyter.core.errors import WfloError

TOKENS_PER_MILLION = 1_000_000
MICROS_PER_USD = 1_000_000


class UnknownModelPrice(WfloError):
    """No price is known for a model: the call is refused instead of costing a silent $0."""

    def __init__(self, model: str, provider: str | None = None) -> None:
        self.model = model
        self.provider = provider
        where = f" (provider {provider})" if provider else ""
        example = '{"' + model + '": {"input": 0.15, "output": 0.60}}'
        super().__init__(
            f"no price known for model {model!r}{where}; set one in USD per million tokens "
            f"with %config WfloMagics.prices = {example} or WFLO_PRICE_OVERRIDES='{example}'"
        )


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"usage {name} must be an int token count, got {value!r}")
    if value < 0:
        raise ValueError(f"usage {name} cannot be negative, got {value}")
    return value


@dataclass(frozen=True)
class Usage:
    """Token counts of one call by billing kind (see the module docstring)."""

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    cache_write_1h: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            _count(f.name, getattr(self, f.name))
        if self.reasoning > self.output:
            raise ValueError(
                f"reasoning tokens ({self.reasoning}) are part of output tokens ({self.output})"
            )

    @property
    def total_input(self) -> int:
        """Every prompt token, cached or not."""
        return self.input + self.cache_read + self.cache_write + self.cache_write_1h

    @property
    def cache_write_total(self) -> int:
        return self.cache_write + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.total_input + self.output

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


_PriceValue = int | Decimal


def _price_value(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise TypeError(
            f"price {name} must be int or Decimal micro-dollars per million tokens, got {value!r}"
        )
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"price {name} must be a finite, non-negative amount, got {value!r}")
    return amount


def _usd_per_mtok(name: str, value: object) -> Decimal:
    """USD per million tokens (``0.15``, ``"0.15"``, ``Decimal``) -> micro-dollars per MTok.

    Floats are accepted only here, at the edge (a ``%config`` dict typed by a person),
    and read through their shortest repr, so ``0.15`` means exactly ``0.15``.
    """
    if isinstance(value, bool):
        raise TypeError(f"price {name}: not a number: {value!r}")
    try:
        if isinstance(value, float):
            amount = Decimal(repr(value))
        elif isinstance(value, int | Decimal | str):
            amount = Decimal(str(value).strip().removeprefix("$"))
        else:
            raise TypeError
    except (ArithmeticError, TypeError, ValueError):
        raise ValueError(f"price {name}: not a dollar amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"price {name} must be a finite, non-negative amount, got {value!r}")
    return amount * MICROS_PER_USD


@dataclass(frozen=True)
class Price:
    """Micro-dollars per million tokens, by kind.

    A missing cache price falls back to the next more general one: ``cache_read`` and
    ``cache_write`` to ``input``, ``cache_write_1h`` to ``cache_write``.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def __init__(
        self,
        input: _PriceValue,
        output: _PriceValue,
        cache_read: _PriceValue | None = None,
        cache_write: _PriceValue | None = None,
        cache_write_1h: _PriceValue | None = None,
    ) -> None:
        object.__setattr__(self, "input", _price_value("input", input))
        object.__setattr__(self, "output", _price_value("output", output))
        for name, value in (
            ("cache_read", cache_read),
            ("cache_write", cache_write),
            ("cache_write_1h", cache_write_1h),
        ):
            object.__setattr__(self, name, None if value is None else _price_value(name, value))

    @classmethod
    def from_usd_per_mtok(
        cls,
        input: object,
        output: object,
        cache_read: object = None,
        cache_write: object = None,
        cache_write_1h: object = None,
    ) -> Price:
        """Build from dollars per million tokens, as providers publish them."""

        def opt(name: str, value: object) -> Decimal | None:
            return None if value is None else _usd_per_mtok(name, value)

        return cls(
            input=_usd_per_mtok("input", input),
            output=_usd_per_mtok("output", output),
            cache_read=opt("cache_read", cache_read),
            cache_write=opt("cache_write", cache_write),
            cache_write_1h=opt("cache_write_1h", cache_write_1h),
        )

    @classmethod
    def from_mapping(cls, model: str, spec: Mapping[str, Any]) -> Price:
        """``{"input": 0.15, "output": 0.60, "cache_read": ..., "cache_write": ...}`` in
        USD per million tokens (the ``WFLO_PRICE_OVERRIDES`` / ``%config`` form)."""
        allowed = {"input", "output", "cache_read", "cache_write", "cache_write_1h"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(
                f"price for {model!r}: unknown field(s) {', '.join(sorted(unknown))} "
                f"(use {', '.join(sorted(allowed))})"
            )
        missing = {"input", "output"} - set(spec)
        if missing:
            raise ValueError(f"price for {model!r}: {' and '.join(sorted(missing))} required")
        return cls.from_usd_per_mtok(**{k: spec[k] for k in spec})

    @property
    def effective_cache_read(self) -> Decimal:
        return self.input if self.cache_read is None else self.cache_read

    @property
    def effective_cache_write(self) -> Decimal:
        return self.input if self.cache_write is None else self.cache_write

    @property
    def effective_cache_write_1h(self) -> Decimal:
        return self.effective_cache_write if self.cache_write_1h is None else self.cache_write_1h

    def max_input(self, *, cache_write: bool = True, cache_write_1h: bool = True) -> Decimal:
        """The highest price a prompt token can be billed at (for worst-case estimates);
        cache-write prices count only when the request can write to the cache."""
        candidates = [self.input, self.effective_cache_read]
        if cache_write:
            candidates.append(self.effective_cache_write)
        if cache_write_1h:
            candidates.append(self.effective_cache_write_1h)
        return max(candidates)


def ceil_micros(value: Fraction | Decimal | int) -> int:
    """Round an exact micro-dollar amount up to a whole micro-dollar."""
    return math.ceil(Fraction(value))


def cost_micros(usage: Usage, price: Price) -> int:
    """Exact cost of ``usage`` at ``price``, rounded up to a whole micro-dollar."""
    token_micros = (
        usage.input * Fraction(price.input)
        + usage.cache_read * Fraction(price.effective_cache_read)
        + usage.cache_write * Fraction(price.effective_cache_write)
        + usage.cache_write_1h * Fraction(price.effective_cache_write_1h)
        + usage.output * Fraction(price.output)
    )
    return ceil_micros(token_micros / TOKENS_PER_MILLION)


def worst_case_cost_micros(
    input_tokens: int,
    max_output_tokens: int,
    price: Price,
    *,
    cache_write: bool = True,
    cache_write_1h: bool = True,
) -> int:
    """Upper bound of a call's cost: every prompt token at the dearest input kind it can
    be billed as, plus every possible output token (reasoning is output) at the output
    price."""
    _count("input_tokens", input_tokens)
    _count("max_output_tokens", max_output_tokens)
    input_price = price.max_input(cache_write=cache_write, cache_write_1h=cache_write_1h)
    total = input_tokens * Fraction(input_price) + max_output_tokens * Fraction(price.output)
    return ceil_micros(total / TOKENS_PER_MILLION)


# -- sandbox compute --------------------------------------------------------------------------
def exact_seconds(value: float | Decimal | int) -> Decimal:
    """A number of seconds as an exact ``Decimal`` (a float read through its shortest repr,
    so ``0.1`` means exactly ``0.1``)."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def compute_cost_micros(
    cpu_seconds: float | Decimal | int, price_per_cpu_second_micros: int | Decimal
) -> int:
    """CPU-seconds x micro-dollars per CPU-second, rounded up to a whole micro-dollar."""
    seconds = exact_seconds(cpu_seconds)
    price = Decimal(price_per_cpu_second_micros)
    if not seconds.is_finite() or seconds < 0:
        raise ValueError(f"cpu_seconds must be a non-negative number, got {cpu_seconds!r}")
    if not price.is_finite() or price < 0:
        raise ValueError(f"compute price must be non-negative, got {price_per_cpu_second_micros!r}")
    return math.ceil(seconds * price)


# -- provider usage -> Usage ------------------------------------------------------------------
def _get(mapping: Mapping[str, Any] | None, key: str) -> int:
    if not mapping:
        return 0
    value = mapping.get(key)
    if value is None:
        return 0
    return _count(key, value)


def _details(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"usage {key} must be an object, got {value!r}")
    return value


def normalise_openai(usage: Mapping[str, Any]) -> Usage:
    """OpenAI usage (Chat Completions or Responses API) -> ``Usage``.

    ``prompt_tokens`` / ``input_tokens`` INCLUDE the cached ones
    (``*_tokens_details.cached_tokens``), so uncached input = prompt - cached.
    ``completion_tokens`` / ``output_tokens`` INCLUDE reasoning tokens
    (``*_tokens_details.reasoning_tokens``): they are billed once, as output.
    OpenAI does not bill cache writes.
    """
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = _get(usage, "prompt_tokens")
        completion = _get(usage, "completion_tokens")
        cached = _get(_details(usage, "prompt_tokens_details"), "cached_tokens")
        reasoning = _get(_details(usage, "completion_tokens_details"), "reasoning_tokens")
    else:
        prompt = _get(usage, "input_tokens")
        completion = _get(usage, "output_tokens")
        cached = _get(_details(usage, "input_tokens_details"), "cached_tokens")
        reasoning = _get(_details(usage, "output_tokens_details"), "reasoning_tokens")
    if cached > prompt:
        raise ValueError(f"OpenAI usage: cached_tokens {cached} exceed prompt tokens {prompt}")
    if reasoning > completion:
        raise ValueError(
            f"OpenAI usage: reasoning_tokens {reasoning} exceed completion tokens {completion}"
        )
    return Usage(input=prompt - cached, cache_read=cached, output=completion, reasoning=reasoning)


def normalise_anthropic(usage: Mapping[str, Any]) -> Usage:
    """Anthropic Messages usage -> ``Usage``.

    ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``: the three are disjoint and added. When the
    ``cache_creation`` breakdown is present, its ``ephemeral_1h_input_tokens`` are billed
    at the 1-hour cache-write price and the rest at the 5-minute one. Extended-thinking
    tokens are inside ``output_tokens`` (not reported apart), so ``reasoning`` is 0.
    """
    creation = _get(usage, "cache_creation_input_tokens")
    breakdown = _details(usage, "cache_creation")
    one_hour = _get(breakdown, "ephemeral_1h_input_tokens")
    five_min = _get(breakdown, "ephemeral_5m_input_tokens")
    if breakdown is not None and creation == 0:
        creation = five_min + one_hour
    if one_hour + five_min > creation:
        raise ValueError(
            f"Anthropic usage: cache_creation breakdown ({five_min}+{one_hour}) exceeds "
            f"cache_creation_input_tokens {creation}"
        )
    return Usage(
        input=_get(usage, "input_tokens"),
        cache_read=_get(usage, "cache_read_input_tokens"),
        cache_write=creation - one_hour,
        cache_write_1h=one_hour,
        output=_get(usage, "output_tokens"),
    )


def normalise_usage(provider: str, usage: Mapping[str, Any]) -> Usage:
    """Dispatch on the provider's wire format: ``anthropic``, else OpenAI-compatible."""
    if provider.lower() == "anthropic":
        return normalise_anthropic(usage)
    return normalise_openai(usage)
