"""``StepIO``: what a step exchanges with the kernel outside the workflow history.

Inputs (host values for ``--in``), the outputs the sandbox returned (DataFrames, arrays),
and the live stream of output events stay in the kernel's memory, keyed by step id:
they can be large and are not JSON, so they never travel through Temporal. The
activity fills them on its worker thread; the magic drains the events on the kernel's
main thread (ipykernel routes printed output by the thread's context).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wflo_jupyter.core.reports import OutputEvent


@dataclass
class StepIO:
    """The in-kernel side of one running step."""

    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    fresh: bool = False
    output_cap: int = 10 * 1024 * 1024
    events: queue.Queue[OutputEvent] = field(default_factory=queue.Queue)
    values: dict[str, Any] = field(default_factory=dict)
    value_errors: dict[str, str] = field(default_factory=dict)
    state_lost: bool = False
    before_run: Callable[[Any], None] | None = None  # called with the StepInput
    # answers the cell's LLM calls: (llm_request frame, send) -> None
    llm_handler: Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None] | None = None
    # tried first on the channel's reading thread: answers a cache hit at once (True)
    llm_fast_path: Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool] | None = None
    # waits (up to the seconds given) until every LLM call of the step is in the ledger
    llm_drain: Callable[[float], object] | None = None

    def stream(self, name: str, text: str) -> None:
        self.events.put(("stream", name, text))

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.events.put(("display", data, metadata))

    def notice(self, text: str) -> None:
        self.events.put(("notice", text, None))


class StepIORegistry:
    """Thread-safe map of step id to ``StepIO`` for the steps this kernel runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, StepIO] = {}

    def open(self, step_id: str, io: StepIO) -> StepIO:
        with self._lock:
            self._steps[step_id] = io
        return io

    def get(self, step_id: str) -> StepIO | None:
        with self._lock:
            return self._steps.get(step_id)

    def close(self, step_id: str) -> None:
        with self._lock:
            self._steps.pop(step_id, None)
