"""What every magic shows, from a real kernel: each ``%wflo`` command's output has a
readable ``text/plain`` beside its HTML, no HTML holds an unescaped ``$...$`` pair
(MathJax would typeset it), wflo's notices arrive as display data (not stderr), the help
lists every command and option, and junk options are one-line ``UsageError``s that leave
the kernel alive."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import line
from tests.kernel_driver import CellRun, Kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.core.commands import CELL_OPTIONS, COMMAND_HELP, parse_line_command
from wflo_jupyter.core.commands import COMMANDS as LINE_COMMANDS
from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.steps import parse_step_spec

pytestmark = LLM_KERNEL

DOLLAR_PAIR = re.compile(r"\$[^$]*\$")
WIDGET = "application/vnd.jupyter.widget-view+json"
TEAM = f"outputs{uuid.uuid4().hex[:6]}"
MARKER = uuid.uuid4().hex[:8]
LLM_CELL = (
    "%%wflo --name twice\n"
    "from openai import OpenAI\n"
    "client = OpenAI()\n"
    "for _ in range(2):\n"
    "    client.chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
    f"        messages=[{{'role': 'user', 'content': 'outputs {MARKER}'}}])\n"
    "print('answered')\n"
)


@pytest.fixture(scope="module")
def kernel_env() -> dict[str, str]:
    return {"WFLO_PROVIDER": "mock"}  # the module's kernel answers LLM calls offline


@pytest.fixture(scope="module")
def llm_run(kernel: Kernel) -> CellRun:
    """A notebook budget of $1, a team budget, and a cell whose second call is a cache hit."""
    assert kernel.run("%wflo budget 1").status == "ok"
    assert kernel.run(f"%wflo budget --team {TEAM} 5 --period day").status == "ok"
    run = kernel.run(LLM_CELL)
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    return run


def _notices(run: CellRun) -> list[str]:
    return [
        str(d["text/plain"]) for d in run.data if str(d.get("text/plain", "")).startswith("[wflo] ")
    ]


def _readable(bundle: dict[str, Any]) -> str:
    text = str(bundle.get("text/plain", ""))
    assert text.strip(), bundle
    assert not re.fullmatch(r"<.* object( at 0x[0-9a-f]+)?>", text), text
    assert not text.startswith(("HTML(", "<IPython")), text
    return text


COMMANDS = [
    "status",
    "runs",
    "events",
    "budget",
    f"budget --team {TEAM}",
    f"team {TEAM}",
    "report",
    "cache stats",
    "meter",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reads_as_text_and_as_math_free_html(
    kernel: Kernel, llm_run: CellRun, command: str
) -> None:
    run = kernel.run(f"%wflo {command}")
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    assert run.stderr == ""
    assert run.data, "no output"
    for bundle in run.data:
        _readable(bundle)
        html = str(bundle.get("text/html", ""))
        assert not DOLLAR_PAIR.search(html), (command, DOLLAR_PAIR.findall(html)[:3])
        if html and command != "report":  # pandas writes its own classes
            assert "tex2jax_ignore mathjax_ignore" in html
    plain = "\n".join(str(b["text/plain"]) for b in run.data)
    if command.startswith(("budget", "team")):
        assert "budget $" in plain, plain
    if command == "runs":  # an aligned table: a header, a rule, the step's row
        lines = plain.splitlines()
        assert lines[0].split()[:3] == ["#", "name", "status"], plain
        assert set(lines[1]) <= {"-", " "}
        assert any(" twice " in row and "completed" in row for row in lines[2:]), plain
    if command == "report":
        assert "twice" in plain and "(USD)" in plain, plain
        assert any("image/png" in b for b in run.data)  # the chart
    if command == "meter":  # the widget's text for front ends without widgets
        widget = next(b for b in run.data if WIDGET in b)
        assert widget["text/plain"].startswith("[wflo] notebook budget: "), widget
        assert "of $1.00" in widget["text/plain"], widget
    if command == "cache stats":
        assert re.search(r"^hits +\d+$", plain, re.M), plain


def test_notices_are_display_data_not_stderr(llm_run: CellRun, kernel: Kernel) -> None:
    assert llm_run.stdout == "answered\n"
    assert "[wflo]" not in llm_run.stderr and "cache hit" not in llm_run.stderr
    assert llm_run.stderr == ""
    hits = [n for n in _notices(llm_run) if n.startswith("[wflo] cache hit: gpt-4o-mini")]
    assert len(hits) == 1, _notices(llm_run)
    assert "answered at $0, saved $0.0" in hits[0]
    bundle = next(d for d in llm_run.data if d.get("text/plain") == hits[0])
    assert "$" not in bundle["text/html"] and "wflo-notice" in bundle["text/html"]
    # the magics' own notices too
    for command, said in (
        (f"team {TEAM}", f"[wflo] this notebook's steps are also charged to team {TEAM}"),
        ("cache clear --model no-such-model", "[wflo] removed 0 cached answer"),
        ("restart", "[wflo] new sandbox session: state from earlier cells was dropped"),
    ):
        run = kernel.run(f"%wflo {command}")
        assert run.status == "ok" and run.stderr == "" and run.stdout == "", run
        assert any(n.startswith(said) for n in _notices(run)), (command, _notices(run))


def test_help_lists_every_command_and_option(kernel: Kernel) -> None:
    for asked in ("%wflo", "%wflo help"):
        shown = kernel.run(asked)
        assert shown.status == "ok" and shown.stderr == ""
        for name, what in CELL_OPTIONS + COMMAND_HELP:
            assert re.search(rf"^  {re.escape(name)} +{re.escape(what)}$", shown.stdout, re.M)
    for magic in ("%wflo", "%%wflo"):
        msg_id = kernel.client.execute(f"{magic}?")
        while True:
            reply = kernel.client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        page = reply["content"]["payload"][0]["data"]["text/plain"]
        for name, what in CELL_OPTIONS + COMMAND_HELP:
            assert what in page, (magic, name)


def _fails(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except SpecError:
        return True
    return False


def _typable(text: str) -> bool:
    """One line as the magic receives it: no line break, no IPython expansion ($x, {x}),
    no trailing ``?`` (that asks for help)."""
    return (
        len(f"x{text}x".splitlines()) == 1
        and not set(text) & set("\r\n{}$")
        and not text.rstrip().endswith("?")
    )


def _cell(options: str) -> str:
    return f"%%wflo {options}\nprint('never runs')\n"


commanded = st.tuples(st.sampled_from(LINE_COMMANDS), line).map(" ".join)
junk_line = st.one_of(line, commanded, commanded).filter(_typable)
junk_line = junk_line.filter(lambda t: _fails(parse_line_command, t))
junk_cell = line.filter(_typable).filter(lambda t: _fails(lambda s: parse_step_spec(s, "x"), t))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(junk=st.one_of(junk_line.map(lambda t: f"%wflo {t}"), junk_cell.map(_cell)))
def test_junk_options_are_one_line_usage_errors(kernel: Kernel, junk: str) -> None:
    run = kernel.run(junk, timeout=60)
    assert run.status == "error", (junk, run)
    assert run.reply.get("ename") == "UsageError", (junk, run.reply)
    assert run.error is None  # no traceback message: IPython prints the one line
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), (junk, run.stderr)
    assert "Traceback" not in run.stderr and run.stdout == "" and not run.data


def test_the_kernel_survives_the_junk(kernel: Kernel) -> None:
    assert kernel.alive()
    assert kernel.run("%%wflo\nprint('still here')").stdout == "still here\n"
