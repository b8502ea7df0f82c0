"""Worst cases shown to the analyst before any money moves.

- ``EstimateTally``: what a ``%%wflo --estimate`` dry run counted, call by call (the
  sandbox's LLM calls arrive on the gateway's worker threads, so it is thread-safe), and
  its report: ``this cell would make 3 calls, worst case $0.0123`` and a line per model;
  a call the real run would refuse before pricing it (``OutputLimitExceeded``) is not
  priced but reported with its reason (``refuse``).
- ``CallNotConfirmed``: a call whose worst case is above ``%config
  WfloMagics.confirm_above`` waits for the analyst's yes in the running cell; a no, or a
  run that cannot ask (no stdin: nbclient, ``wflo demo``), refuses it with one line that
  says how to allow it. ``confirm_question`` is what the analyst is asked.

Money is integer micro-dollars.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.core.money import format_usd, micros_to_usd

PLACEHOLDER_MARK = "[wflo estimate placeholder]"


def placeholder_text(model: str, worst_micros: int | None) -> str:
    """The answer every call of a dry run gets: it says what it is first."""
    cost = (
        f"it would cost at most {format_usd(worst_micros)}"
        if worst_micros is not None
        else "no price is known for this model"
    )
    return (
        f"{PLACEHOLDER_MARK} Not a model answer: %%wflo --estimate sent nothing to {model}; {cost}."
    )


@dataclass
class ModelEstimate:
    """The calls one model would get in a dry run."""

    model: str
    calls: int = 0
    worst_micros: int = 0  # of the priced calls
    unpriced: int = 0  # calls of a model with no known price
    cached: int = 0  # calls the cache could answer now, at $0


class EstimateTally:
    """The calls of one dry run, by model, in the order models first appeared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelEstimate] = {}
        self._refused: list[str] = []

    def add(self, model: str, worst_micros: int | None, *, cached: bool = False) -> None:
        """One call: its worst case (None: no price known), and whether the cache holds
        its answer now."""
        with self._lock:
            entry = self._models.setdefault(model, ModelEstimate(model))
            entry.calls += 1
            if worst_micros is None:
                entry.unpriced += 1
            else:
                entry.worst_micros += worst_micros
            entry.cached += int(cached)

    def refuse(self, reason: str) -> None:
        """One call the real run would refuse before anything is reserved (not priced)."""
        with self._lock:
            self._refused.append(reason)

    @property
    def refused(self) -> list[str]:
        with self._lock:
            return list(self._refused)

    def models(self) -> list[ModelEstimate]:
        with self._lock:
            return [ModelEstimate(**vars(m)) for m in self._models.values()]

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.models())

    @property
    def worst_micros(self) -> int:
        return sum(m.worst_micros for m in self.models())

    def lines(self, budget_micros: int | None = None, *, failed: bool = False) -> list[str]:
        """The report: a headline, a line per model, the cache, the cell budget; whether
        the cell ``failed`` before its end."""
        models = self.models()
        calls = sum(m.calls for m in models)
        total = sum(m.worst_micros for m in models)
        head = "[wflo] estimate (dry run: no provider was called, nothing was reserved or spent)"
        tail = ["the cell failed: calls it would make after the failure are not counted"]
        if not failed:
            tail = []
        refused = self.refused
        if refused:
            tail = [
                f"{_calls(len(refused))} would be refused before anything is reserved:",
                *(f"  {reason}" for reason in dict.fromkeys(refused)),
                *tail,
            ]
        if not calls:
            return [head, "this cell would make no LLM calls", *tail]
        unpriced = ", ".join(m.model for m in models if m.unpriced)
        worst = _worst(total, f"no price known for {unpriced}" if unpriced else "")
        lines = [head, f"this cell would make {_calls(calls)}, {worst}"]
        for m in models:
            if m.unpriced == m.calls:
                what = f"no price known (set one with {_PRICES_HINT})"
            else:
                what = _worst(m.worst_micros, f"{m.unpriced} without a price" if m.unpriced else "")
            lines.append(f"  {m.model}: {_calls(m.calls)}, {what}")
        cached = sum(m.cached for m in models)
        if cached:
            lines.append(
                f"{cached} of them would be answered from the cache at $0 "
                "(if still cached when the cell runs)"
            )
        if budget_micros is not None and total > budget_micros:
            lines.append(
                f"the worst case is above the cell budget {format_usd(budget_micros)}: "
                "calls past it would be refused"
            )
        return lines + tail


def _worst(micros: int, unknown: str) -> str:
    """``worst case $0.01``, or ``worst case at least $0.01 (...)`` when some calls have
    no price."""
    if unknown:
        return f"worst case at least {format_usd(micros)} ({unknown})"
    return f"worst case {format_usd(micros)}"


_PRICES_HINT = "%config WfloMagics.prices"


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


# -- confirm_above --------------------------------------------------------------------------
def confirm_question(label: str, worst_micros: int, threshold_micros: int) -> str:
    """``gpt-4o, max_tokens=4096: this call may cost up to $0.04, above confirm_above
    $0.01. Send it? [y/N]``"""
    return (
        f"[wflo] {label}: this call may cost up to {format_usd(worst_micros)}, above "
        f"confirm_above {format_usd(threshold_micros)}. Send it? [y/N] "
    )


class CallNotConfirmed(WfloError):
    """A call above ``confirm_above`` that the analyst declined, or could not be asked
    about: refused before anything was reserved or sent."""

    @classmethod
    def declined(cls, label: str, worst_micros: int) -> CallNotConfirmed:
        """The analyst said no (or did not answer before the cell's time ran out)."""
        return cls(
            f"{label}: not confirmed (it may cost up to {format_usd(worst_micros)}); "
            "nothing was sent or spent"
        )

    @classmethod
    def cannot_ask(cls, label: str, worst_micros: int, threshold_micros: int) -> CallNotConfirmed:
        cents = -(-worst_micros // 10_000) * 10_000  # rounded up to a whole cent
        return cls(
            f"{label}: may cost up to {format_usd(worst_micros)}, above "
            f"WfloMagics.confirm_above {format_usd(threshold_micros)}, and this run cannot "
            f"ask (no stdin); allow it with %config WfloMagics.confirm_above = "
            f"{micros_to_usd(cents):.2f} (or None)"
        )
