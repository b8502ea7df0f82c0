"""``StepIO``: what a step exchanges with the kernel outside the workflow history.

Inputs (host values for ``--in``), the outputs the sandbox returned (DataFrames, arrays),
and the live stream of output events stay in the kernel's memory, keyed by step id:
they can be large and are not JSON, so they never travel through Temporal. The
activity fills them on its worker thread; the magic drains the events on the kernel's
main thread (ipykernel routes printed output by the thread's context).

Questions to the analyst cross the same way (``confirm_above``): an LLM call waiting on a
gateway worker thread puts a ``Question`` on the step's event queue and blocks; the main
thread, draining that queue (``pump``), asks it (``input()`` reaches the kernel's stdin
channel only from there) and hands the answer back. Output stays in order around it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wflo_jupyter.core.estimates import EstimateTally
from wflo_jupyter.core.reports import OutputEvent

log = logging.getLogger(__name__)

Ask = Callable[[str], bool | None]
"""Puts a question to the analyst on the kernel's main thread: True yes, False no, None
this run cannot ask (no stdin)."""


class Question:
    """One question from a worker thread to the analyst; the first reply wins (the
    analyst's, or a no when the cell's time ran out or the step ended)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._answer: bool | None = False

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    def reply(self, answer: bool | None) -> bool:
        """Answer unless already answered; True if this reply is the answer."""
        with self._lock:
            if self._answered.is_set():
                return False
            self._answer = answer
            self._answered.set()
            return True

    def wait(self, timeout_s: float | None = None) -> bool | None:
        """The answer; no when none came within ``timeout_s``."""
        if not self._answered.wait(timeout_s):
            self.reply(False)
        return self._answer


@dataclass
class StepIO:
    """The in-kernel side of one running step."""

    inputs: dict[str, Any] = field(default_factory=dict)
    # a worker's step: the inputs as the kernel encoded them, and the --out payloads as
    # the sandbox sent them (both handed on, never decoded here)
    encoded_inputs: dict[str, dict[str, str]] | None = None
    output_payloads: dict[str, Any] = field(default_factory=dict)
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
    # cancels the step's LLM calls in flight (closes their provider connections)
    llm_cancel: Callable[[], object] | None = None
    estimate: EstimateTally | None = None  # a dry run's calls (--estimate)
    llm_requests: int = 0  # LLM calls the cell made (answered from the cache or not)
    deadline: float | None = None  # monotonic: when the running cell's --timeout ends
    # cancellation: set by ``cancel`` (the kernel's interrupt, or Temporal's cancel seen by
    # the activity's heartbeat); ``on_cancel`` is what the running activity does about it
    cancelled: bool = False
    on_cancel: Callable[[], None] | None = None
    attempt: int = 0  # the newest ``execute`` attempt: an older one that wakes up gives way
    sandbox_before: str | None = None  # the container the step found (its first attempt)
    _questions: set[Question] = field(default_factory=set)
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Any thread: stop the step (interrupt the cell, cancel its LLM calls); again
        (e.g. from each heartbeat) re-sends the interrupt. Never raises."""
        self.cancelled = True
        action = self.on_cancel
        if action is not None:
            try:
                action()
            except Exception:
                log.exception("cancelling the step failed")

    def stream(self, name: str, text: str) -> None:
        self.events.put(("stream", name, text))

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.events.put(("display", data, metadata))

    def notice(self, text: str) -> None:
        self.events.put(("notice", text, None))

    def wake(self) -> None:
        """Any thread: make a waiting ``pump`` return now (the step's workflow ended)."""
        self.events.put(("wake", None, None))

    def ask(self, text: str) -> bool | None:
        """Any thread: ask the analyst through the thread that ``pump``s this step's events
        and wait for the answer: no once the step is over or the cell's time ran out (the
        cell's ``--timeout`` keeps running while it waits)."""
        question = Question(text)
        with self._lock:
            if self._closed:
                return False
            self._questions.add(question)
        self.events.put(("question", question, None))
        deadline = self.deadline
        return question.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def pump(self, deliver: Callable[[OutputEvent], None], ask: Ask | None, wait_s: float) -> None:
        """On the kernel's main thread: deliver the events that arrived (waiting up to
        ``wait_s`` for the first) and answer questions with ``ask`` (None: cannot ask)."""
        try:
            event = self.events.get(timeout=wait_s) if wait_s else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            if event[0] == "question":
                self._answer(event[1], ask, deliver)
            elif event[0] != "wake":
                deliver(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _answer(
        self, question: Question, ask: Ask | None, deliver: Callable[[OutputEvent], None]
    ) -> None:
        try:
            if question.answered:
                return  # the cell's time ran out before it was asked
            answer = ask(question.text) if ask is not None else None
            if not question.reply(answer) and answer:
                late = "too late: the cell's --timeout ran out while asking; nothing was sent"
                deliver(("notice", late, None))
        except Exception:
            log.exception("asking the analyst failed")
            question.reply(None)
        finally:
            question.reply(False)  # interrupted while asking: no
            with self._lock:
                self._questions.discard(question)

    def close(self) -> None:
        """The step is over: questions still waiting get a no, later ones too."""
        with self._lock:
            self._closed = True
            waiting, self._questions = list(self._questions), set()
        for question in waiting:
            question.reply(False)


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
