"""The dry run's report and the confirm_above lines (``core/estimates.py``), and the
hand-off of a question from a worker thread to the thread that drains a step's events
(``orchestration/stepio.py``)."""

from __future__ import annotations

import threading
import time

from wflo_jupyter.core.estimates import (
    PLACEHOLDER_MARK,
    CallNotConfirmed,
    EstimateTally,
    confirm_question,
    placeholder_text,
)
from wflo_jupyter.orchestration.stepio import StepIO


def test_report_has_a_headline_and_a_line_per_model() -> None:
    tally = EstimateTally()
    tally.add("gpt-4o-mini", 1_200)
    tally.add("gpt-4o-mini", 800, cached=True)
    tally.add("claude-haiku-4-5", 5_000)
    lines = tally.lines()
    assert lines[0].startswith("[wflo] estimate (dry run: no provider was called")
    assert lines[1:] == [
        "this cell would make 3 calls, worst case $0.007",
        "  gpt-4o-mini: 2 calls, worst case $0.002",
        "  claude-haiku-4-5: 1 call, worst case $0.005",
        "1 of them would be answered from the cache at $0 (if still cached when the cell runs)",
    ]
    assert (tally.calls, tally.worst_micros) == (3, 7_000)


def test_a_model_without_a_price_is_named_not_counted_as_zero() -> None:
    tally = EstimateTally()
    tally.add("gpt-4o-mini", 1_000)
    tally.add("my-model", None)
    lines = tally.lines(budget_micros=500)
    assert lines[1] == (
        "this cell would make 2 calls, worst case at least $0.001 (no price known for my-model)"
    )
    assert lines[3] == "  my-model: 1 call, no price known (set one with %config WfloMagics.prices)"
    assert lines[-1] == (
        "the worst case is above the cell budget $0.0005: calls past it would be refused"
    )


def test_no_calls() -> None:
    assert EstimateTally().lines()[1:] == ["this cell would make no LLM calls"]


def test_placeholder_says_what_it_is_first() -> None:
    text = placeholder_text("gpt-4o", 12_300)
    assert text.startswith(PLACEHOLDER_MARK)
    assert "gpt-4o" in text and "$0.0123" in text
    assert "no price is known" in placeholder_text("my-model", None)


def test_confirm_lines_are_one_line_and_say_how_to_allow() -> None:
    label = "gpt-4o, max_completion_tokens=4096"
    question = confirm_question(label, 41_234, 10_000)
    assert question == (
        "[wflo] gpt-4o, max_completion_tokens=4096: this call may cost up to $0.041234, "
        "above confirm_above $0.01. Send it? [y/N] "
    )
    refused = str(CallNotConfirmed.cannot_ask(label, 41_234, 10_000))
    assert "\n" not in refused
    assert "this run cannot ask (no stdin)" in refused
    assert refused.endswith("%config WfloMagics.confirm_above = 0.05 (or None)")
    declined = str(CallNotConfirmed.declined(label, 41_234))
    assert declined.endswith(
        "not confirmed (it may cost up to $0.041234); nothing was sent or spent"
    )


def test_a_question_crosses_to_the_draining_thread_in_order_with_output() -> None:
    io = StepIO()
    answers: list[bool | None] = []
    io.stream("stdout", "before\n")
    worker = threading.Thread(target=lambda: answers.append(io.ask("send? ")))
    worker.start()
    seen: list[object] = []
    asked: list[str] = []

    def ask(text: str) -> bool:
        asked.append(text)
        return True

    while worker.is_alive():
        io.pump(seen.append, ask, wait_s=0.05)
    worker.join()
    assert seen == [("stream", "stdout", "before\n")]
    assert asked == ["send? "] and answers == [True]


def test_no_stdin_and_a_closed_step() -> None:
    io = StepIO()
    answers: list[bool | None] = []
    worker = threading.Thread(target=lambda: answers.append(io.ask("send? ")))
    worker.start()
    while worker.is_alive():
        io.pump(lambda _e: None, None, wait_s=0.05)  # this run cannot ask
    assert answers == [None]
    waiting = threading.Thread(target=lambda: answers.append(io.ask("again? ")))
    waiting.start()
    io.close()  # the step ended before anyone answered
    waiting.join(5)
    assert answers == [None, False]
    assert io.ask("late? ") is False


def test_a_question_expires_with_the_cells_time_and_a_late_yes_sends_nothing() -> None:
    io = StepIO()
    io.deadline = time.monotonic() + 0.2  # the running cell's --timeout
    answers: list[bool | None] = []
    worker = threading.Thread(target=lambda: answers.append(io.ask("send? ")))
    worker.start()
    seen: list[object] = []

    def slow_yes(_text: str) -> bool:
        worker.join(5)  # the analyst answers after the cell's time ran out
        return True

    io.pump(seen.append, slow_yes, wait_s=1)
    assert answers == [False]
    assert seen == [
        ("notice", "too late: the cell's --timeout ran out while asking; nothing was sent", None)
    ]
