"""Errors the product raises; each renders as one specific line."""

from __future__ import annotations


class WfloError(Exception):
    """Base class of every wflo-jupyter error."""


class ConfigError(WfloError):
    """A setting (``WFLO_*`` variable, ``%config`` trait) has an unusable value."""


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecError(WfloError):
    """The options of a ``%%wflo`` cell (or a ``%wflo`` command) are invalid; its message
    is always one line, whatever the user typed."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class EngineUnavailable(WfloError):
    """An engine the step needs (Postgres, Temporal, Docker, ...) does not answer."""


class LedgerUnavailable(EngineUnavailable):
    """The ledger's PostgreSQL does not answer: nothing that spends money may run (a
    ``%%wflo`` cell is refused, an LLM call gets HTTP 503 and is retried by its SDK)."""


class SandboxError(WfloError):
    """The sandbox could not run the cell (missing image, engine failure, limit)."""


class StepCancelled(WfloError):
    """The analyst interrupted the cell: its workflow was cancelled and the step recorded
    ``cancelled`` (no traceback: the message says what became of the sandbox)."""


class StepFailed(WfloError):
    """The cell's code raised inside the sandbox; carries the sandbox traceback."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.traceback_text = traceback_text


class UnsafeOutput(WfloError):
    """A ``--out`` value is not in a safe format; it was not brought back."""


class OutputLimitExceeded(WfloError):
    """A request asks for more output tokens than its model can write: refused before
    anything is reserved or sent, as the provider itself would refuse it."""

    def __init__(
        self, field: str, requested: int, model: str, limit: int, *, exact: bool = True
    ) -> None:
        self.field, self.requested, self.model, self.limit = field, requested, model, limit
        what = "output limit" if exact else "context window"
        super().__init__(
            one_line(f"{field}={requested} is above {model}'s {what} of {limit:,} tokens")
        )
