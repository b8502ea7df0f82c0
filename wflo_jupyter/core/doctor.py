"""``wflo doctor``'s findings and verdict: what one check found, how bad it is, the remedy,
and whether the quickstart can run. Pure: the probes (``wflo_jupyter.doctor``) measure, the
rules in ``core.doctor_rules`` turn their measurements into ``Finding`` s, and
``DoctorReport`` says the last word.

Levels: ``ok``; ``info`` (nothing to do, e.g. an engine the first cell starts on demand);
``warn`` (works, degraded: say how to fix it); ``fail`` (blocks the quickstart); ``skip``
(not checked because a check it depends on failed; that one already says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"
INFO = "info"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"
LEVELS = (OK, INFO, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's table.

    ``check``: what was checked ("Docker engine", "postgres"); ``state``: one or two words
    ("ok", "unreachable", "down", "stale"); ``found``: what was seen (address, version,
    the error); ``remedy``: what to do, when something is to be done."""

    check: str
    level: str
    state: str
    found: str
    remedy: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level {self.level!r} is not one of {', '.join(LEVELS)}")

    @property
    def blocking(self) -> bool:
        return self.level == FAIL

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "state": self.state,
            "found": self.found,
            "remedy": self.remedy,
            "blocking": self.blocking,
        }


@dataclass(frozen=True)
class DoctorReport:
    """Every finding, in the order shown, and the verdict."""

    findings: tuple[Finding, ...]
    version: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def blocking(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.blocking)

    @property
    def ok(self) -> bool:
        return not self.blocking

    @property
    def exit_code(self) -> int:
        """0 when nothing blocks the quickstart, else 1."""
        return 0 if self.ok else 1

    def verdict(self) -> str:
        """The last line: ready, or what blocks the quickstart."""
        warnings = [f.check for f in self.findings if f.level == WARN]
        if self.ok:
            extra = f" (with warnings: {', '.join(warnings)})" if warnings else ""
            return f"ready for the quickstart{extra}"
        names = ", ".join(f"{f.check} {f.state}" for f in self.blocking)
        return f"the quickstart is blocked: {names}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ok": self.ok,
            "blocking": [f.check for f in self.blocking],
            "verdict": self.verdict(),
            "checks": [f.as_dict() for f in self.findings],
        }


__all__ = ["FAIL", "INFO", "LEVELS", "OK", "SKIP", "WARN", "DoctorReport", "Finding"]
