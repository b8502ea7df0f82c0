"""How many tokens a model may write in one answer: the limit ``PriceBook.worst_case``
checks a request's ``max_tokens`` against, and the cap it reserves for when there is none.

Owns ``model_limits.json`` (package data next to this file): the max output tokens of
current OpenAI and Anthropic models, curated from the providers' model pages (each entry
names its source), since genai-prices records context windows but not output limits. A
model is found by its exact id, then by that id without a dated snapshot suffix or
``-latest`` (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``, ``claude-3-5-haiku-20241022``
-> ``claude-3-5-haiku``), in its provider's table first, then the other's (an
OpenAI-compatible server serving a Claude model).

``OutputLimits.limit`` answers with a ``ModelLimit``: the table's value, a user override
(``max_output_tokens`` in ``%config WfloMagics.prices`` / ``WFLO_PRICE_OVERRIDES``,
parsed here by ``parse_limit_overrides``), or else genai-prices' ``context_window`` as a
looser upper bound (no answer can be longer than the model's whole context).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from wflo_jupyter.core.errors import ConfigError

__all__ = [
    "LIMIT_KEY",
    "ModelLimit",
    "OutputLimits",
    "max_output_tokens",
    "parse_limit_overrides",
    "table_models",
]

LIMIT_KEY = "max_output_tokens"
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")


@dataclass(frozen=True)
class ModelLimit:
    """A model's output limit and where it comes from."""

    tokens: int
    source: Literal["override", "table", "context_window"]

    @property
    def exact(self) -> bool:
        """True when it is the model's real output limit (not its context window)."""
        return self.source != "context_window"


@cache
def _table() -> dict[str, dict[str, int]]:
    text = resources.files(__package__).joinpath("model_limits.json").read_text("utf-8")
    raw = json.loads(text)
    return {
        provider: {model: int(entry[LIMIT_KEY]) for model, entry in models.items()}
        for provider, models in raw.items()
        if not provider.startswith("_")
    }


def _candidates(model: str) -> list[str]:
    lowered = model.lower()
    stripped = _SNAPSHOT.sub("", lowered)
    return [lowered] if stripped == lowered else [lowered, stripped]


def max_output_tokens(provider: str | None, model: str) -> int | None:
    """The curated max output tokens of ``model``, or None when the table has nothing."""
    table = _table()
    order = [provider.lower()] if provider and provider.lower() in table else []
    order += [p for p in table if p not in order]
    for name in _candidates(model):
        for which in order:
            found = table[which].get(name)
            if found is not None:
                return found
    return None


def table_models(provider: str) -> list[str]:
    """The model ids the table lists for ``provider`` (the offline mock's model list)."""
    return list(_table().get(provider, {}))


def context_window(provider: str | None, model: str) -> int | None:
    """genai-prices' context window of ``model`` (None when it knows none)."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    for provider_id in ([provider.lower()] if provider else []) + [None]:
        try:
            _, info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            continue
        window = getattr(info, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None
    return None


def parse_limit_overrides(raw: Mapping[str, Any], source: str) -> dict[str, int]:
    """``{"model": {"max_output_tokens": 8000, ...}}`` -> ``{model: 8000}`` (other keys
    are prices, ignored here); ``ConfigError`` naming ``source``."""
    limits: dict[str, int] = {}
    for model, spec in raw.items():
        if not isinstance(spec, Mapping) or LIMIT_KEY not in spec:
            continue
        value = spec[LIMIT_KEY]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"{source}: {LIMIT_KEY} for {model!r} must be a positive integer, got {value!r}"
            )
        limits[str(model).lower()] = value
    return limits


class OutputLimits:
    """Output limits by model: overrides first, then the table, then the context window."""

    def __init__(self) -> None:
        self._user: dict[str, int] = {}
        self._env: dict[str, int] = {}

    def set_overrides(self, user: Mapping[str, int], env: Mapping[str, int] | None = None) -> None:
        self._user = dict(user)
        if env is not None:
            self._env = dict(env)

    def limit(self, provider: str | None, model: str) -> ModelLimit | None:
        lowered = model.lower()
        keys = ([f"{provider.lower()}/{lowered}"] if provider else []) + [lowered]
        for table in (self._user, self._env):
            for key in keys:
                if key in table:
                    return ModelLimit(table[key], "override")
        tokens = max_output_tokens(provider, model)
        if tokens is not None:
            return ModelLimit(tokens, "table")
        window = context_window(provider, model)
        return None if window is None else ModelLimit(window, "context_window")
