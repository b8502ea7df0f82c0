"""LLM cache keys: canonical request -> key, without Redis.

Properties: the order of object keys never changes a key; any answer-changing field
does; transport and labelling fields (``stream``, ``user``, ...) do not; the key layout
round-trips and its SCAN patterns select exactly one namespace / model.
"""

from __future__ import annotations

import fnmatch
import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wflo_jupyter.cache.keys import (
    ANSWER_HEADERS,
    DEFAULT_NAMESPACE,
    IGNORED_BODY_FIELDS,
    CacheKey,
    all_entries_pattern,
    cache_key,
    canonical_json,
    model_pattern,
    namespace_pattern,
    stats_key,
)

OPENAI = {"provider": "openai", "base_url": "https://api.openai.com/v1"}
CHAT = "/chat/completions"

ANSWER_FIELDS = [
    "model",
    "messages",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "response_format",
    "text",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "seed",
    "stop",
    "stop_sequences",
    "reasoning",
    "reasoning_effort",
    "thinking",
    "system",
    "n",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "parallel_tool_calls",
    "store",
    "service_tier",
    "previous_response_id",
    "dimensions",
    "encoding_format",
    "some_future_field",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
    ),
    min_size=1,
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "claude-3-5-haiku-latest", "llama3:8b"])},
    optional={
        "messages": messages,
        "temperature": st.floats(min_value=0, max_value=2),
        "max_tokens": st.integers(min_value=1, max_value=4096),
        "tools": json_values,
        "response_format": json_values,
        "extra": json_values,
    },
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    """``value`` with every object's key order shuffled (recursively)."""
    if isinstance(value, dict):
        names = list(value)
        rng.shuffle(names)
        return {name: _shuffled(value[name], rng) for name in names}
    if isinstance(value, list):
        return [_shuffled(item, rng) for item in value]
    return value


def _key(body: dict[str, Any], **overrides: Any) -> CacheKey:
    arguments: dict[str, Any] = {**OPENAI, "endpoint": CHAT, "body": body, **overrides}
    return cache_key(**arguments)


@settings(max_examples=200, deadline=None)
@given(body=bodies, rng=st.randoms(use_true_random=False))
def test_key_order_never_changes_the_key(body: dict[str, Any], rng: random.Random) -> None:
    assert _key(_shuffled(body, rng)) == _key(body)


@settings(max_examples=300, deadline=None)
@given(body=bodies, field=st.sampled_from(ANSWER_FIELDS), new_value=json_values)
def test_any_answer_changing_field_changes_the_key(
    body: dict[str, Any], field: str, new_value: Any
) -> None:
    if field == "model":
        assume(isinstance(new_value, str) and new_value)
    changed = {**body, field: new_value}
    assume(field not in body or canonical_json(body[field]) != canonical_json(new_value))
    assert _key(changed).digest != _key(body).digest


@settings(deadline=None)
@given(body=bodies, field=st.sampled_from(sorted(IGNORED_BODY_FIELDS)), value=json_values)
def test_transport_and_label_fields_do_not_change_the_key(
    body: dict[str, Any], field: str, value: Any
) -> None:
    assert _key({**body, field: value}) == _key(body)


def test_stream_is_not_part_of_the_key() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert _key(streamed) == _key(body) == _key({**body, "stream": False})


@pytest.mark.parametrize(
    ("left", "right", "same"),
    [
        ({"temperature": 1}, {"temperature": 1.0}, True),
        ({"max_tokens": 100}, {"max_tokens": 100.0}, True),
        ({"temperature": 0.7}, {"temperature": 0.7000001}, False),
        ({"seed": 1}, {"seed": True}, False),
        ({"stop": ["a", "b"]}, {"stop": ("a", "b")}, True),
        ({"stop": ["a", "b"]}, {"stop": ["b", "a"]}, False),
        ({"messages": [{"content": "hi"}]}, {"messages": [{"content": "hi "}]}, False),
        ({"temperature": None}, {}, False),
    ],
)
def test_number_and_sequence_normalisation(
    left: dict[str, Any], right: dict[str, Any], same: bool
) -> None:
    base = {"model": "gpt-4o-mini"}
    assert (_key({**base, **left}) == _key({**base, **right})) is same


def test_where_the_request_goes_is_part_of_the_key() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    reference = _key(body).digest
    assert _key(body, provider="anthropic").digest != reference
    assert _key(body, base_url="http://127.0.0.1:8000/v1").digest != reference
    assert _key(body, endpoint="/responses").digest != reference
    assert _key(body, model="gpt-4o-mini-deployment").digest != reference
    # spelling variants of the same place are the same place
    assert _key(body, provider=" OpenAI ").digest == reference
    assert _key(body, base_url="HTTPS://API.OPENAI.COM/v1/").digest == reference
    assert _key(body, endpoint="chat/completions/").digest == reference


def test_only_answer_headers_count() -> None:
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 10}
    reference = _key(body, headers={"anthropic-version": "2023-06-01"}).digest
    noise = {"Anthropic-Version": "2023-06-01", "x-api-key": "secret", "user-agent": "sdk/1"}
    assert _key(body, headers=noise).digest == reference
    for name in sorted(ANSWER_HEADERS):
        assert _key(body, headers={name: "other"}).digest != reference


def test_namespace_is_in_the_key_not_the_digest() -> None:
    body = {"model": "gpt-4o-mini"}
    shared, notebook = _key(body), _key(body, namespace="nb-123")
    assert shared.namespace == DEFAULT_NAMESPACE
    assert shared.digest == notebook.digest
    assert shared.redis_key != notebook.redis_key


def test_key_layout() -> None:
    key = _key({"model": "gpt-4o-mini"}, namespace="nb-1")
    assert key.redis_key == f"wflo:llm:nb-1:gpt-4o-mini:{key.digest}"
    assert key.lock_name == f"llm:nb-1:gpt-4o-mini:{key.digest}"
    assert stats_key("nb-1") == "wflo:llmstats:nb-1"
    assert not fnmatch.fnmatchcase(stats_key("nb-1"), all_entries_pattern())
    assert not fnmatch.fnmatchcase(f"wflo:lock:{key.lock_name}", all_entries_pattern())


segment_text = st.text(min_size=1, max_size=16)


@settings(max_examples=300, deadline=None)
@given(
    namespace=segment_text,
    model=segment_text,
    other_namespace=segment_text,
    other_model=segment_text,
)
def test_scan_patterns_select_exactly_one_namespace_or_model(
    namespace: str, model: str, other_namespace: str, other_model: str
) -> None:
    key = CacheKey(namespace=namespace, model=model, digest="a" * 64)
    assert CacheKey.parse(key.redis_key) == key
    # encoded segments carry no Redis glob characters, so fnmatch is Redis' glob here
    for segment in key.redis_key.split(":"):
        assert not set(segment) & set("*?[]\\ ")

    def matches(pattern: str) -> bool:
        return fnmatch.fnmatchcase(key.redis_key, pattern)

    assert matches(all_entries_pattern())
    assert matches(namespace_pattern(namespace))
    assert matches(model_pattern(model)) and matches(model_pattern(model, namespace))
    assert matches(namespace_pattern(other_namespace)) == (other_namespace == namespace)
    assert matches(model_pattern(other_model)) == (other_model == model)
    assert matches(model_pattern(model, other_namespace)) == (other_namespace == namespace)


def test_bad_requests_are_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="names no model"):
        _key({"messages": []})
    with pytest.raises(TypeError, match=r"messages\[0\] is not JSON \(object\)"):
        _key({"model": "m", "messages": [object()]})
    with pytest.raises(TypeError, match="non-string key 1"):
        _key({"model": "m", "logit_bias": {1: 2}})
    with pytest.raises(ValueError, match="not an LLM cache key"):
        CacheKey.parse("wflo:lock:llm:a:b:c")
    with pytest.raises(ValueError, match="digest"):
        CacheKey(namespace="a", model="b", digest="xyz")
    with pytest.raises(ValueError, match="namespace is empty"):
        _key({"model": "m"}, namespace="")
