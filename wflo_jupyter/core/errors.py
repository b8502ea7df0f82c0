"""Errors the product raises; each renders as one specific line."""

from __future__ import annotations


class WfloError(Exception):
    """Base class of every wflo-jupyter error."""


class ConfigError(WfloError):
    """A setting (``WFLO_*`` variable, ``%config`` trait) has an unusable value."""


class SpecError(WfloError):
    """The options of a ``%%wflo`` cell are invalid."""


class EngineUnavailable(WfloError):
    """An engine the step needs (Postgres, Temporal, Docker, ...) does not answer."""


class SandboxError(WfloError):
    """The sandbox could not run the cell (missing image, engine failure, limit)."""


class StepFailed(WfloError):
    """The cell's code raised inside the sandbox; carries the sandbox traceback."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.traceback_text = traceback_text


class UnsafeOutput(WfloError):
    """A ``--out`` value is not in a safe format; it was not brought back."""
