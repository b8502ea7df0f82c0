"""Model output limits (``ledger.model_limits``) and how ``PriceBook.worst_case`` uses
them: a ``max_tokens`` above the limit is refused before anything is priced, a request
without one is reserved at the model's own limit (the configured cap when unknown)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from wflo_jupyter.core.errors import ConfigError, OutputLimitExceeded
from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.ledger.model_limits import (
    ModelLimit,
    OutputLimits,
    context_window,
    max_output_tokens,
    table_models,
)
from wflo_jupyter.ledger.pricing import DEFAULT_MAX_TOKENS_CAP, PriceBook
from wflo_jupyter.ledger.tokens import TokenCounter


@pytest.fixture
def book(tmp_path: Path) -> PriceBook:
    return PriceBook(env={}, counter=TokenCounter(tmp_path))


def _chat(model: str = "gpt-4o-mini", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("provider", "model", "limit"),
    [
        ("openai", "gpt-4o-mini", 16384),
        ("openai", "gpt-4o-mini-2024-07-18", 16384),  # dated snapshot
        ("openai", "GPT-4o-mini", 16384),
        ("openai", "gpt-4o-2024-05-13", 4096),  # an exact entry wins over its family
        ("openai", "gpt-4o-2024-08-06", 16384),
        ("openai", "gpt-3.5-turbo-0125", 4096),
        ("openai", "o3-mini-2025-01-31", 100000),
        ("openai", "gpt-5", 128000),
        ("anthropic", "claude-3-5-haiku-20241022", 8192),
        ("anthropic", "claude-3-5-haiku-latest", 8192),
        ("anthropic", "claude-3-7-sonnet-20250219", 64000),
        ("anthropic", "claude-opus-4-20250514", 32000),
        ("anthropic", "claude-haiku-4-5", 64000),
        ("openai", "claude-3-haiku-20240307", 4096),  # a compatible server: the other table
        ("openai", "my-own-model", None),
        ("openai", "gpt-4o-mini-tts", None),  # not a snapshot: no guess from a prefix
    ],
)
def test_table_lookup(provider: str, model: str, limit: int | None) -> None:
    assert max_output_tokens(provider, model) == limit


def test_every_table_entry_is_sourced_and_positive() -> None:
    raw = json.loads(
        resources.files("wflo_jupyter.ledger").joinpath("model_limits.json").read_text()
    )
    for provider in ("openai", "anthropic"):
        assert len(raw[provider]) >= 10
        for model, entry in raw[provider].items():
            assert entry["max_output_tokens"] > 0, model
            assert entry["source"].startswith("https://"), model
    assert "gpt-4o-mini" in table_models("openai")


def test_limits_fall_back_to_the_context_window_and_honour_overrides() -> None:
    limits = OutputLimits()
    window = context_window("openai", "gpt-4-32k")
    assert window is not None
    assert max_output_tokens("openai", "gpt-4-32k") is None
    assert limits.limit("openai", "gpt-4-32k") == ModelLimit(window, "context_window")
    assert limits.limit("openai", "no-such-model-anywhere") is None
    limits.set_overrides({"gpt-4o-mini": 1000}, {"openai/gpt-4o": 2000})
    assert limits.limit("openai", "GPT-4o-mini") == ModelLimit(1000, "override")
    assert limits.limit("openai", "gpt-4o") == ModelLimit(2000, "override")
    assert limits.limit("anthropic", "gpt-4o") == ModelLimit(16384, "table")


def test_worst_case_refuses_a_max_tokens_above_the_limit(book: PriceBook) -> None:
    with pytest.raises(OutputLimitExceeded) as refused:
        book.worst_case("openai", "gpt-4o-mini", _chat(max_tokens=100000))
    assert str(refused.value) == (
        "max_tokens=100000 is above gpt-4o-mini's output limit of 16,384 tokens"
    )
    assert (refused.value.field, refused.value.limit) == ("max_tokens", 16384)
    with pytest.raises(OutputLimitExceeded, match="max_completion_tokens=16385"):
        book.worst_case("openai", "gpt-4o-mini", _chat(max_completion_tokens=16385))
    with pytest.raises(
        OutputLimitExceeded, match="claude-3-5-haiku-latest's output limit of 8,192"
    ):
        book.worst_case(
            "anthropic",
            "claude-3-5-haiku-latest",
            _chat("claude-3-5-haiku-latest", max_tokens=9000),
        )
    body = {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 20000}
    with pytest.raises(OutputLimitExceeded, match="max_output_tokens=20000"):
        book.worst_case("openai", "gpt-4o-mini", body, endpoint="responses")


def test_worst_case_at_the_limit_and_times_n(book: PriceBook) -> None:
    at = book.worst_case("openai", "gpt-4o-mini", _chat(max_tokens=16384))
    assert (at.capped, at.max_tokens, at.max_output_tokens) == (False, 16384, 16384)
    three = book.worst_case("openai", "gpt-4o-mini", _chat(max_tokens=16384, n=3))
    assert three.max_output_tokens == 3 * 16384
    assert three.micros > 2 * at.micros


def test_worst_case_without_a_limit_reserves_the_models_own(book: PriceBook) -> None:
    worst = book.worst_case("openai", "gpt-4o-mini", _chat())
    assert (worst.capped, worst.max_tokens) == (True, 16384)
    assert worst.apply_to(_chat())["max_completion_tokens"] == 16384
    n2 = book.worst_case("openai", "gpt-4o-mini", _chat(n=2))
    assert n2.max_output_tokens == 2 * 16384
    haiku = book.worst_case(
        "anthropic", "claude-3-haiku-20240307", _chat("claude-3-haiku-20240307")
    )
    assert (haiku.max_tokens, haiku.max_tokens_field) == (4096, "max_tokens")
    # genai-prices knows only the context window: never above the default cap
    assert book.worst_case("openai", "gpt-4-32k", _chat("gpt-4-32k")).max_tokens == (
        DEFAULT_MAX_TOKENS_CAP
    )


def test_worst_case_of_an_unknown_model_keeps_the_default_cap(tmp_path: Path) -> None:
    book = PriceBook({"house": {"input": 1, "output": 2}}, env={}, counter=TokenCounter(tmp_path))
    worst = book.worst_case("openai", "house", _chat("house"))
    assert (worst.capped, worst.max_tokens) == (True, DEFAULT_MAX_TOKENS_CAP)
    assert book.worst_case("openai", "house", _chat("house", max_tokens=10**6)).max_tokens == 10**6


def test_overrides_set_limits_with_or_without_a_price(tmp_path: Path) -> None:
    env = {"WFLO_PRICE_OVERRIDES": '{"house": {"input": 1, "output": 2, "max_output_tokens": 500}}'}
    book = PriceBook(
        {"gpt-4o-mini": {"max_output_tokens": 32000}}, env=env, counter=TokenCounter(tmp_path)
    )
    assert book.worst_case("openai", "gpt-4o-mini", _chat(max_tokens=30000)).max_tokens == 30000
    assert book.price("openai", "gpt-4o-mini").output == 600_000  # genai-prices still
    assert book.worst_case("openai", "house", _chat("house")).max_tokens == 500
    with pytest.raises(OutputLimitExceeded, match="house's output limit of 500"):
        book.worst_case("openai", "house", _chat("house", max_tokens=501))
    book.set_overrides(None)
    with pytest.raises(OutputLimitExceeded):
        book.worst_case("openai", "gpt-4o-mini", _chat(max_tokens=30000))
    for bad in (0, -1, "8000", True, 1.5):
        with pytest.raises(ConfigError, match="max_output_tokens for 'm' must be a positive"):
            PriceBook({"m": {"max_output_tokens": bad}}, env={}, counter=TokenCounter(tmp_path))


def test_the_estimate_report_names_refused_calls() -> None:
    tally = EstimateTally()
    tally.add("gpt-4o-mini", 1000)
    tally.refuse("OutputLimitExceeded: max_tokens=100000 is above gpt-4o-mini's output limit")
    lines = tally.lines()
    assert "this cell would make 1 call, worst case $0.001" in lines
    assert "1 call would be refused before anything is reserved:" in lines
    assert lines[-1].startswith("  OutputLimitExceeded: max_tokens=100000")
