"""Pricing: usage normalisation, exact micro-dollar costs, price sources, worst cases.

The table below is computed by hand from the prices in genai-prices' bundled data. A
price of $X per million tokens is X micro-dollars per token, so each cost is
sum(tokens x price) in micro-dollars, rounded up to a whole micro-dollar.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from wflo_jupyter.core.errors import ConfigError
from wflo_jupyter.core.pricing import (
    Price,
    UnknownModelPrice,
    Usage,
    cost_micros,
    normalise_anthropic,
    normalise_openai,
    worst_case_cost_micros,
)
from wflo_jupyter.ledger.pricing import PriceBook, parse_price_overrides
from wflo_jupyter.ledger.tokens import DEFAULT_IMAGE_TOKENS, TokenCounter, estimate_input_tokens

# (provider, model, raw provider usage, expected normalised Usage, expected micro-dollars)
CASES: list[tuple[str, str, dict[str, Any], Usage, int]] = [
    # gpt-4o-mini $0.15 in / $0.075 cached / $0.60 out. prompt 1200 includes 1000 cached:
    # 200 x 0.15 = 30; 1000 x 0.075 = 75; 300 x 0.60 = 180 -> 285
    (
        "openai",
        "gpt-4o-mini",
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1000},
        },
        Usage(input=200, cache_read=1000, output=300),
        285,
    ),
    # gpt-4o $2.50 / $1.25 cached / $10: 5904 x 2.5 = 14760; 4096 x 1.25 = 5120;
    # 1000 x 10 = 10000 -> 29880
    (
        "openai",
        "gpt-4o-2024-08-06",
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 1_000,
            "prompt_tokens_details": {"cached_tokens": 4_096, "audio_tokens": 0},
        },
        Usage(input=5_904, cache_read=4_096, output=1_000),
        29_880,
    ),
    # o3-mini $1.10 / $4.40; 1500 of the 2000 completion tokens are reasoning, billed once
    # as output: 500 x 1.1 = 550; 2000 x 4.4 = 8800 -> 9350 (double counting: 15950)
    (
        "openai",
        "o3-mini",
        {
            "prompt_tokens": 500,
            "completion_tokens": 2_000,
            "completion_tokens_details": {"reasoning_tokens": 1_500},
        },
        Usage(input=500, output=2_000, reasoning=1_500),
        9_350,
    ),
    # o4-mini, Responses API shape, $1.10 / $0.275 cached / $4.40:
    # 952 x 1.1 = 1047.2; 2048 x 0.275 = 563.2; 1200 x 4.4 = 5280 -> 6890.4 -> 6891
    (
        "openai",
        "o4-mini",
        {
            "input_tokens": 3_000,
            "input_tokens_details": {"cached_tokens": 2_048},
            "output_tokens": 1_200,
            "output_tokens_details": {"reasoning_tokens": 1_024},
        },
        Usage(input=952, cache_read=2_048, output=1_200, reasoning=1_024),
        6_891,
    ),
    # o1 $15 / $60: 1000 x 15 = 15000; 5000 x 60 = 300000 -> 315000
    (
        "openai",
        "o1",
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 5_000,
            "completion_tokens_details": {"reasoning_tokens": 4_500},
        },
        Usage(input=1_000, output=5_000, reasoning=4_500),
        315_000,
    ),
    # gpt-4.1-mini $0.40 / $1.60: 7 x 0.4 = 2.8; 3 x 1.6 = 4.8 -> 7.6 -> rounds up to 8
    (
        "openai",
        "gpt-4.1-mini",
        {"prompt_tokens": 7, "completion_tokens": 3},
        Usage(input=7, output=3),
        8,
    ),
    # gpt-5 $1.25 / $0.125 cached / $10: 2000 x 1.25 = 2500; 18000 x 0.125 = 2250;
    # 800 x 10 = 8000 -> 12750
    (
        "openai",
        "gpt-5",
        {
            "prompt_tokens": 20_000,
            "completion_tokens": 800,
            "prompt_tokens_details": {"cached_tokens": 18_000},
            "completion_tokens_details": {"reasoning_tokens": 640},
        },
        Usage(input=2_000, cache_read=18_000, output=800, reasoning=640),
        12_750,
    ),
    # gpt-3.5-turbo has no cached price: cached tokens cost the input price $0.50.
    # 500 x 0.5 + 500 x 0.5 = 500; 100 x 1.5 = 150 -> 650
    (
        "openai",
        "gpt-3.5-turbo",
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 500},
        },
        Usage(input=500, cache_read=500, output=100),
        650,
    ),
    # claude-sonnet-4 $3 in / $0.30 read / $3.75 write / $15 out; input_tokens EXCLUDES
    # cache reads and writes: 100 x 3 = 300; 5000 x 0.3 = 1500; 2000 x 3.75 = 7500;
    # 700 x 15 = 10500 -> 19800
    (
        "anthropic",
        "claude-sonnet-4-20250514",
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 5_000,
            "cache_creation_input_tokens": 2_000,
            "output_tokens": 700,
        },
        Usage(input=100, cache_read=5_000, cache_write=2_000, output=700),
        19_800,
    ),
    # claude-3-5-haiku $0.80 / $1 5-minute write / $1.60 1-hour write / $4 out:
    # 50 x 0.8 = 40; 2000 x 1 = 2000; 1000 x 1.6 = 1600; 400 x 4 = 1600 -> 5240
    (
        "anthropic",
        "claude-3-5-haiku-latest",
        {
            "input_tokens": 50,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 3_000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 2_000,
                "ephemeral_1h_input_tokens": 1_000,
            },
            "output_tokens": 400,
        },
        Usage(input=50, cache_write=2_000, cache_write_1h=1_000, output=400),
        5_240,
    ),
    # claude-opus-4-1 $15 / $1.50 read / $75: 1234 x 15 = 18510; 10000 x 1.5 = 15000;
    # 2345 x 75 = 175875 -> 209385
    (
        "anthropic",
        "claude-opus-4-1",
        {"input_tokens": 1_234, "cache_read_input_tokens": 10_000, "output_tokens": 2_345},
        Usage(input=1_234, cache_read=10_000, output=2_345),
        209_385,
    ),
    # claude-3-haiku $0.25 / $1.25: 1 x 0.25 + 1 x 1.25 = 1.5 -> rounds up to 2
    (
        "anthropic",
        "claude-3-haiku-20240307",
        {"input_tokens": 1, "output_tokens": 1},
        Usage(input=1, output=1),
        2,
    ),
    # claude-sonnet-4-5 above 200k prompt tokens (150000 + 60000 = 210000) bills every
    # token at the long-context tier $6 / $0.60 read / $22.50 out:
    # 150000 x 6 = 900000; 60000 x 0.6 = 36000; 1000 x 22.5 = 22500 -> 958500
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000},
        Usage(input=150_000, cache_read=60_000, output=1_000),
        958_500,
    ),
    # ... and below it (100000 + 60000) at the base tier $3 / $0.30 / $15:
    # 300000 + 18000 + 15000 -> 333000
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"input_tokens": 100_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000},
        Usage(input=100_000, cache_read=60_000, output=1_000),
        333_000,
    ),
    # claude-haiku-4-5 $1 / $1.25 write / $5: 10 x 1 = 10; 1000 x 1.25 = 1250;
    # 200 x 5 = 1000 -> 2260
    (
        "anthropic",
        "claude-haiku-4-5",
        {"input_tokens": 10, "cache_creation_input_tokens": 1_000, "output_tokens": 200},
        Usage(input=10, cache_write=1_000, output=200),
        2_260,
    ),
]


@pytest.fixture
def book() -> PriceBook:
    return PriceBook(env={})


@pytest.mark.parametrize(
    ("provider", "model", "raw", "usage", "micros"),
    CASES,
    ids=[f"{c[1]}-{c[4]}" for c in CASES],
)
def test_price_table(
    book: PriceBook, provider: str, model: str, raw: dict[str, Any], usage: Usage, micros: int
) -> None:
    normalise = normalise_anthropic if provider == "anthropic" else normalise_openai
    assert normalise(raw) == usage
    assert book.cost_micros(provider, model, usage) == micros


@pytest.mark.parametrize(("provider", "model", "raw", "usage", "micros"), CASES)
def test_price_table_agrees_with_genai_prices(
    provider: str, model: str, raw: dict[str, Any], usage: Usage, micros: int
) -> None:
    """genai-prices' own calculation (its Usage counts input including cache tokens)."""
    theirs = calc_price(
        GenaiUsage(
            input_tokens=usage.total_input,
            cache_read_tokens=usage.cache_read,
            cache_write_tokens=usage.cache_write_total,
            cache_write_1h_tokens=usage.cache_write_1h,
            output_tokens=usage.output,
        ),
        model,
        provider_id=provider,
    )
    assert math.ceil(theirs.total_price * 1_000_000) == micros


def test_reasoning_is_output_never_billed_twice() -> None:
    price = Price.from_usd_per_mtok("1", "4")
    with_reasoning = Usage(input=10, output=100, reasoning=90)
    assert cost_micros(with_reasoning, price) == cost_micros(Usage(input=10, output=100), price)
    with pytest.raises(ValueError, match="part of output"):
        Usage(output=10, reasoning=11)


def test_cost_is_exact_and_rounds_up() -> None:
    price = Price(input=Decimal("0.1"), output=Decimal("0.1"))  # 0.1 micro-$ per MTok
    assert cost_micros(Usage(input=1), price) == 1  # 1e-7 micro-dollars -> 1
    assert cost_micros(Usage(), price) == 0
    big = Price.from_usd_per_mtok("3", "15")
    # 10**9 tokens x $3/MTok = $3000 = 3e9 micros exactly, no float drift
    assert cost_micros(Usage(input=10**9), big) == 3_000_000_000


def test_prices_refuse_floats_inside_but_read_them_at_the_edge() -> None:
    with pytest.raises(TypeError):
        Price(input=0.15, output=0.6)  # type: ignore[arg-type]
    assert Price.from_usd_per_mtok(0.15, 0.6).input == Decimal("150000")
    assert Price.from_usd_per_mtok("$0.15", "0.60").output == Decimal("600000")
    with pytest.raises(ValueError, match="not a dollar amount"):
        Price.from_usd_per_mtok("cheap", 1)
    with pytest.raises(ValueError, match="non-negative"):
        Price.from_usd_per_mtok(-1, 1)


def test_normalise_openai_validates() -> None:
    with pytest.raises(ValueError, match="cached_tokens"):
        normalise_openai({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 6}})
    with pytest.raises(TypeError):
        normalise_openai({"prompt_tokens": "5"})
    assert normalise_openai({"prompt_tokens": 3, "prompt_tokens_details": None}) == Usage(input=3)
    assert normalise_openai({}) == Usage()


def test_normalise_anthropic_breakdown_without_total() -> None:
    usage = normalise_anthropic(
        {"input_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": 7}, "output_tokens": 2}
    )
    assert usage == Usage(input=1, cache_write_1h=7, output=2)
    with pytest.raises(ValueError, match="breakdown"):
        normalise_anthropic(
            {"cache_creation_input_tokens": 5, "cache_creation": {"ephemeral_1h_input_tokens": 6}}
        )


# -- price sources -------------------------------------------------------------------------------
def test_unknown_model_is_an_error_naming_how_to_price_it(book: PriceBook) -> None:
    with pytest.raises(UnknownModelPrice) as info:
        book.cost_micros("openai-compatible", "llama3-local", Usage(input=1))
    message = str(info.value)
    assert "\n" not in message
    assert "'llama3-local'" in message
    assert "%config WfloMagics.prices" in message
    assert "WFLO_PRICE_OVERRIDES" in message


def test_overrides_env_and_config(book: PriceBook) -> None:
    env = {"WFLO_PRICE_OVERRIDES": '{"llama3-local": {"input": 0.1, "output": 0.2}}'}
    priced = PriceBook(env=env)
    # 1000 x 0.1 + 1000 x 0.2 = 300
    assert priced.cost_micros("ollama", "llama3-local", Usage(input=1000, output=1000)) == 300
    # %config beats the environment, which beats genai-prices
    priced.set_overrides({"llama3-local": {"input": 1, "output": 1}, "gpt-4o-mini": Price(0, 0)})
    assert priced.cost_micros("ollama", "llama3-local", Usage(input=1000, output=1000)) == 2000
    assert priced.cost_micros("openai", "gpt-4o-mini", Usage(input=10**6)) == 0
    # provider-qualified keys
    qualified = PriceBook({"openai/gpt-4o": {"input": "1", "output": "2"}}, env={})
    assert qualified.cost_micros("openai", "gpt-4o", Usage(output=10)) == 20
    assert qualified.cost_micros("azure", "gpt-4o", Usage(output=10)) == 100


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "not JSON"),
        ('["gpt"]', "expected"),
        ('{"m": 1}', "must be an object"),
        ('{"m": {"input": 1}}', "output required"),
        ('{"m": {"input": 1, "output": 1, "per_call": 1}}', "unknown field"),
    ],
)
def test_bad_overrides_are_config_errors(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PriceBook(env={"WFLO_PRICE_OVERRIDES": value})


def test_override_json_is_read_as_decimal() -> None:
    prices = parse_price_overrides('{"m": {"input": 0.1, "output": 0.3}}', "test")
    assert prices["m"].input == Decimal("100000.0")  # no 0.1000000000000000055 from a float


# -- worst case ----------------------------------------------------------------------------------
def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def test_worst_case_without_max_tokens_uses_and_returns_the_cap(tmp_path: Path) -> None:
    book = PriceBook(
        {"house-model": {"input": 0.15, "output": 0.60}},
        env={},
        max_tokens_cap=1000,
        counter=TokenCounter(tmp_path),
    )
    body = _chat("hi")
    worst = book.worst_case("openai", "gpt-4o-mini", body)
    assert worst.capped
    assert worst.max_tokens == 16384  # gpt-4o-mini's own output limit, not the cap
    assert worst.max_tokens_field == "max_completion_tokens"
    serialised = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert worst.tokenizer == "o200k_base"  # offline, from bpe-openai's published ranks
    assert 1 <= worst.input_tokens < len(serialised)  # exact, tighter than the byte bound
    # input tokens x $0.15 + 16384 x $0.60, rounded up
    assert worst.micros == math.ceil(worst.input_tokens * 0.15 + 16384 * 0.6)
    assert worst.apply_to(body)["max_completion_tokens"] == 16384
    assert "max_completion_tokens" not in body
    # a model whose output limit is unknown: the configured cap
    house = {"model": "house-model", "messages": [{"role": "user", "content": "hi"}]}
    unknown = book.worst_case("openai", "house-model", house)
    assert (unknown.capped, unknown.max_tokens) == (True, 1000)
    assert unknown.apply_to(house)["max_completion_tokens"] == 1000
    compatible = book.worst_case("ollama", "house-model", house)
    assert compatible.max_tokens_field == "max_tokens"
    responses = book.worst_case("openai", "house-model", {"model": "house-model", "input": "x"})
    assert responses.max_tokens_field == "max_output_tokens"


def test_worst_case_counts_every_choice_and_the_given_cap(book: PriceBook) -> None:
    worst = book.worst_case("openai", "gpt-4o-mini", _chat("hi", max_tokens=800, n=3))
    assert not worst.capped
    assert (worst.max_tokens, worst.max_output_tokens) == (800, 2400)
    assert book.worst_case_micros("openai", "gpt-4o-mini", _chat("hi", max_tokens=800))[1] == 800


def test_anthropic_cache_writes_raise_the_worst_case(book: PriceBook) -> None:
    plain = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x" * 1000}],
    }
    cached = json.loads(json.dumps(plain))
    cached["messages"][0]["content"] = [
        {"type": "text", "text": "x" * 1000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    base = book.worst_case("anthropic", "claude-3-5-haiku-latest", plain)
    hour = book.worst_case("anthropic", "claude-3-5-haiku-latest", cached)
    # bytes x $0.80 + 10 x $4 vs bytes x $1.60 (the 1-hour write price) + 10 x $4
    assert base.micros == math.ceil(base.input_tokens * 0.8 + 40)
    assert hour.micros == math.ceil(hour.input_tokens * 1.6 + 40)


def test_long_context_worst_case_uses_the_dearest_reachable_tier(book: PriceBook) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user"}]}
    body["messages"][0]["content"] = "y" * 250_000
    worst = book.worst_case("anthropic", "claude-sonnet-4-5", body)
    assert worst.input_tokens > 200_000
    assert worst.micros == math.ceil(worst.input_tokens * 6 + 22.5)


def test_images_count_an_allowance_not_their_bytes(tmp_path: Path) -> None:
    counter = TokenCounter(tmp_path)
    data_url = "data:image/png;base64," + "A" * 200_000
    body = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
    }
    tokens, _ = counter.count("openai", "gpt-4o", body)
    assert DEFAULT_IMAGE_TOKENS < tokens < DEFAULT_IMAGE_TOKENS + 500
    mini, _ = counter.count("openai", "gpt-4o-mini", body)
    assert mini >= 48_169  # gpt-4o-mini bills images ~33x


# Token ids published for these texts (OpenAI's tokenizer): o200k_base and cl100k_base.
KNOWN_IDS = {
    ("o200k_base", "hello world"): [24912, 2375],
    ("cl100k_base", "hello world"): [15339, 1917],
    ("cl100k_base", "tiktoken is great!"): [83, 1609, 5963, 374, 2294, 0],
}


@pytest.mark.parametrize(("name", "text"), sorted(KNOWN_IDS))
def test_offline_encodings_give_the_published_token_ids(
    tmp_path: Path, name: str, text: str
) -> None:
    encoding = TokenCounter(tmp_path).encoding(name)
    assert encoding is not None, f"{name} should load offline (bpe-openai ships it)"
    assert encoding.encode(text) == KNOWN_IDS[(name, text)]


@pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_offline_encodings_agree_with_bpe_openais_own_encoder(tmp_path: Path, name: str) -> None:
    """Two implementations (tiktoken over the verified ranks, bpe-openai's Rust encoder)
    give the same ids for a spread of texts."""
    import bpe_openai

    ours = TokenCounter(tmp_path).encoding(name)
    theirs = bpe_openai.get_encoding(name)
    texts = ["", "Hello, how are you today?", "naïve café 東京 🚀", "def f(x):\n    return x**2\n"]
    texts += ["The quick brown fox jumps over the lazy dog. " * 30, "1234567890 " * 50]
    for text in texts:
        assert ours.encode(text) == list(theirs.encode(text)), text


def test_gpt_4o_mini_counts_exactly_offline(tmp_path: Path) -> None:
    counter = TokenCounter(tmp_path)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    tokens, tokenizer = counter.count("openai", "gpt-4o-mini", _chat(text))
    assert tokenizer == "o200k_base"
    content = len(counter.encoding("o200k_base").encode(text))
    assert content < tokens < content + 30


def test_exact_tokenizer_when_an_encoding_ships_offline(tmp_path: Path) -> None:
    """cl100k_base ships offline: gpt-4 prompts count exactly."""
    import tiktoken

    counter = TokenCounter(tmp_path)
    encoding = counter.encoding("cl100k_base")
    assert encoding is not None
    text = "The quick brown fox jumps over the lazy dog. " * 20
    body = {"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    tokens, tokenizer = counter.count("openai", "gpt-4", body)
    assert tokenizer == "cl100k_base"
    content_tokens = len(encoding.encode(text))
    assert content_tokens < tokens < content_tokens + 30  # framing, never less than content
    assert tokens < len(json.dumps(body))  # far tighter than the byte bound
    assert tiktoken.encoding_name_for_model("gpt-4") == "cl100k_base"


def test_missing_or_corrupt_encodings_fall_back_to_bytes_and_say_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    said: list[str] = []
    (tmp_path / "tiktoken").mkdir()
    # p50k_base (text-davinci-003) ships in no offline package
    (tmp_path / "tiktoken" / "p50k_base.tiktoken").write_text("not an encoding")
    counter = TokenCounter(tmp_path, on_missing=said.append)
    for _ in range(3):
        body = {"model": "text-davinci-003", "messages": [{"role": "user", "content": "hi"}]}
        assert counter.count("openai", "text-davinci-003", body)[1] == "utf8-bytes"
    assert len(said) == 1
    assert "p50k_base" in said[0]
    assert str(tmp_path / "tiktoken") in said[0]
    assert "ignoring" in caplog.text  # the corrupt file was refused, not trusted


def test_estimate_input_tokens_function(tmp_path: Path) -> None:
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "héllo"}]}
    expected = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
    assert estimate_input_tokens("anthropic", "claude-haiku-4-5", body, home=tmp_path) == expected
    with_tools = {**body, "tools": [{"name": "t", "input_schema": {}}]}
    assert estimate_input_tokens("anthropic", "claude-haiku-4-5", with_tools, home=tmp_path) > (
        expected + 600
    )


texts = st.text(max_size=400)
_OFFLINE_COUNTER = TokenCounter(Path("/nonexistent-wflo-home"))  # loads cl100k once


@settings(max_examples=60, deadline=None)
@given(system=texts, user=texts, max_tokens=st.integers(0, 5000))
def test_worst_case_bounds_every_possible_bill(system: str, user: str, max_tokens: int) -> None:
    """Whatever the provider bills (prompt tokens <= the exact count, any split into
    cached and uncached, output <= max_tokens), it never exceeds the reservation."""
    counter = _OFFLINE_COUNTER
    book = PriceBook(env={}, counter=counter)
    body = {
        "model": "gpt-4",
        "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    worst = book.worst_case("openai", "gpt-4", body)
    encoding = counter.encoding("cl100k_base")
    assert encoding is not None
    content = sum(len(encoding.encode(t, disallowed_special=())) for t in (system, user))
    framing = 3 + 2 * 4  # OpenAI's documented chat framing, generously
    assert worst.input_tokens >= content + framing
    assert worst.input_tokens <= len(json.dumps(body, ensure_ascii=False).encode()) + 64
    billed = Usage(input=content + framing, output=max_tokens)
    assert book.cost_micros("openai", "gpt-4", billed) <= worst.micros


@settings(max_examples=100, deadline=None)
@given(
    input_tokens=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    output=st.integers(0, 10**6),
)
def test_worst_case_cost_dominates_any_split(input_tokens: int, cached: int, output: int) -> None:
    price = Price.from_usd_per_mtok("3", "15", cache_read="0.3", cache_write="3.75")
    total = input_tokens + cached
    for split in (
        Usage(input=total, output=output),
        Usage(input=input_tokens, cache_read=cached, output=output),
        Usage(input=input_tokens, cache_write=cached, output=output),
    ):
        assert cost_micros(split, price) <= worst_case_cost_micros(total, output, price)
