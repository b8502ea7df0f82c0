"""Random option strings into both parsers: only ``SpecError`` comes back (the magic turns
it into a one-line ``UsageError``), never another exception."""

from __future__ import annotations

import math
import shlex

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wflo_jupyter.core.commands import COMMANDS, LineCommand, parse_line_command
from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.steps import StepSpec, parse_step_spec

CELL_FLAGS = [
    "--budget",
    "--name",
    "--in",
    "--out",
    "--timeout",
    "--memory",
    "--cpus",
    "--image",
    "--retries",
    "--no-cache",
    "--fresh",
    "--estimate",
]
LINE_FLAGS = ["-n", "--all", "--team", "--period", "--model", "--notebook"]
VALUES = [
    "0",
    "-1",
    "1",
    "0.5",
    "$1",
    "$",
    "1e400",
    "-1e400",
    "9" * 400,
    "1e999999999",
    "nan",
    "inf",
    "-inf",
    "1_000",
    "0x10",
    "512m",
    "2g",
    "1.5GiB",
    "99999999999999999999g",
    "16m",
    "day",
    "month",
    "none",
    "stats",
    "clear",
    "x" * 300,
    "a,b",
    "a,,b",
    "class",
    "1a",
    "'",
    '"',
    "\\",
    "=",
    "--",
    "-",
    "é",
    "\x00",
    " ",
    "",
]

word = st.one_of(
    st.sampled_from(CELL_FLAGS + LINE_FLAGS + list(COMMANDS) + VALUES),
    st.text(max_size=12),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)
value = st.one_of(st.sampled_from(VALUES), st.sampled_from(VALUES), word)
flag = st.sampled_from(CELL_FLAGS + LINE_FLAGS)
pairs = st.lists(
    st.one_of(
        st.tuples(flag, value).map(list),
        st.tuples(flag, value).map(lambda p: [f"{p[0]}={p[1]}"]),
        st.tuples(flag).map(list),
        word.map(lambda w: [w]),
    ),
    max_size=6,
)
raw_words = st.one_of(
    pairs.map(lambda groups: [w for g in groups for w in g]), st.lists(word, max_size=8)
)
quoted_line = raw_words.map(shlex.join)  # parses into exactly these words
raw_line = raw_words.map(" ".join)  # may not even split (stray quotes)
line = st.one_of(quoted_line, raw_line, st.text(max_size=60))

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
        message = str(exc)
        assert message and "\n" not in message, repr(message)
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
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            continue
        assert isinstance(parsed, LineCommand) and parsed.name in COMMANDS
        limit = parsed.options.get("limit_micros")
        assert limit is None or 0 <= limit < 2**63
