"""Random option lines for the magics (hypothesis strategies), shared by the parser fuzz
(``tests/unit/test_magic_fuzz.py``) and the real-kernel fuzz
(``tests/integration/test_outputs_kernel.py``): known flags and commands, values at the
edges (overflowing numbers, NaN, the empty string, stray quotes, control characters),
random words, ``--flag=value`` forms, lines that do not even split."""

from __future__ import annotations

import shlex

from hypothesis import strategies as st

from wflo_jupyter.core.commands import COMMANDS

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
