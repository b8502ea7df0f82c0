"""``OutageNotices``: one engine's outages as its users meet them, said once each way.

Whoever meets the engine unreachable calls ``down`` and whoever finds it answering calls
``back``; only the first ``down`` of an outage and the first ``back`` after it say
anything (through ``notice``, which lands in the running cell or the next one). The texts
name the engine, its address, what that means now, and the remedy. Thread-safe, no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["OutageNotices", "remedy"]


def remedy(variable: str) -> str:
    """What to do about an engine configured by ``variable`` (or the local stack's)."""
    return f"start it with `wflo up`, or point {variable} at the configured address"


class OutageNotices:
    """The outages of the engine ``label`` (e.g. ``"Temporal"``): ``down_since`` and one
    notice when it goes, one when it is back."""

    def __init__(self, label: str, variable: str, notice: Callable[[str], None]) -> None:
        self.label = label
        self.remedy = remedy(variable)
        self.notice = notice
        self._lock = threading.Lock()
        self._down_since: float | None = None

    @property
    def down_since(self) -> float | None:
        """When the current outage was first met (``time.time()``), None while it answers."""
        return self._down_since

    def line(self, address: str, meaning: str) -> str:
        """``<label> at <address> is unreachable: <meaning>; <remedy>``."""
        return f"{self.label} at {address} is unreachable: {meaning}; {self.remedy}"

    def down(self, address: str, meaning: str, *, announce: bool = True) -> bool:
        """The engine at ``address`` did not answer. The first call of an outage says so
        (unless ``announce`` is False: the caller's own error says it) and returns True."""
        with self._lock:
            if self._down_since is not None:
                return False
            self._down_since = time.time()
        if announce:
            self.notice(self.line(address, meaning))
        return True

    def back(self, address: str, meaning: str) -> bool:
        """The engine at ``address`` answered: the first call after an outage says it is
        back (``meaning``: what works again) and returns True."""
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is None:
            return False
        self.notice(
            f"{self.label} at {address} is back after {time.time() - since:.0f} s: {meaning}"
        )
        return True
