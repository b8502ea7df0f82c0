"""Random option strings into both parsers: only ``SpecError`` comes back (the magic turns
it into a one-line ``UsageError``), never another exception."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz import line
from wflo_jupyter.core.commands import COMMANDS, LineCommand, parse_line_command
from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.steps import StepSpec, parse_step_spec


def _one_line(error: SpecError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(line=line, code=st.sampled_from(["x = 1\n", "", "   \n"]))
@example(line="'\n'", code="x = 1\n")  # argparse echoes the word: still one line
@example(line="--memory " + "9" * 400, code="x = 1\n")  # float overflow
@example(line="--budget 1e999999999", code="x = 1\n")  # decimal overflow
@example(line="--budget 1e400", code="x = 1\n")  # beyond the ledger's BIGINT
@example(line="--timeout 1e400", code="x = 1\n")  # inf
@example(line="--cpus 1e-300", code="x = 1\n")  # Docker reads 0 as "no limit"
@example(line="--name=--", code="x = 1\n")  # argparse 3.11 gives []
@example(line="--name " + "x" * 300, code="x = 1\n")  # longer than the ledger's column
def test_cell_options_raise_only_spec_errors(line: str, code: str) -> None:
    try:
        spec = parse_step_spec(line, code)
    except SpecError as exc:
        _one_line(exc)
        return
    assert isinstance(spec, StepSpec)
    assert math.isfinite(spec.timeout_s) and spec.timeout_s > 0
    assert math.isfinite(spec.cpus) and spec.cpus > 0
    assert spec.memory_bytes > 0 and spec.retries >= 0
    assert spec.name is None or 0 < len(spec.name) <= 255
    assert spec.budget_micros is None or 0 <= spec.budget_micros < 2**63


@FUZZ
@given(command=st.sampled_from(COMMANDS), rest=line)
@example(command="budget", rest="1E20")
@example(command="budget", rest="--team=--")
@example(command="events", rest="-n 99999999999999999999")
def test_line_commands_raise_only_spec_errors(command: str, rest: str) -> None:
    for text in (f"{command} {rest}", rest):
        try:
            parsed = parse_line_command(text)
        except SpecError as exc:
            _one_line(exc)
            continue
        assert isinstance(parsed, LineCommand) and parsed.name in COMMANDS
        limit = parsed.options.get("limit_micros")
        assert limit is None or 0 <= limit < 2**63
