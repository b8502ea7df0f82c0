"""What the magics show, without a kernel: tables read as aligned text and as HTML that no
MathJax typesets, notices are quiet display lines, the help lists every option and
command, and every ``%config WfloMagics`` setting says what it does."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from wflo_jupyter.core.budget import BudgetScope, BudgetState
from wflo_jupyter.core.commands import CELL_OPTIONS, COMMAND_HELP, COMMANDS, _parsers, magic_help
from wflo_jupyter.core.reports import CacheReport, CacheStats, StepCostRow, StepSummary
from wflo_jupyter.core.steps import _build_parser
from wflo_jupyter.jupyter import display
from wflo_jupyter.jupyter.magics import WfloMagics

DOLLAR_PAIR = re.compile(r"\$[^$]*\$")


def _states() -> list[BudgetState]:
    return [
        BudgetState(BudgetScope("notebook", "nb.ipynb"), 1_000_000, 250_000, 10_000),
        BudgetState(BudgetScope("team", "ml"), 5_000_000, 0, 0, period="day"),
    ]


def _steps() -> list[StepSummary]:
    return [
        StepSummary("a" * 36, 1, "load", "completed", "ok", 1234, 12, "wflo-step-a"),
        StepSummary("b" * 36, 12, "a much longer name", "failed", "error", None, 1_500_000, None),
    ]


def test_a_table_is_aligned_text_with_the_same_rows() -> None:
    table = display.steps_table(_steps())
    text = repr(table)
    assert text == table.text()
    lines = text.splitlines()
    assert lines[0].split() == ["#", "name", "status", "exit", "duration", "cost", "workflow"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 2  # header, rule, one line per row
    assert "$0.000012" in lines[2] and "$1.50" in lines[3]
    # numbers, durations and amounts align right: their last characters share a column
    assert lines[2].index("1.23 s") + len("1.23 s") == lines[3].index("0.00 s") + len("0.00 s")
    assert lines[2].index("$0.000012") + 9 == lines[3].index("$1.50") + 5
    # text columns align left
    assert lines[2].index("load") == lines[3].index("a much longer name")
    assert "<IPython" not in text


def test_table_html_escapes_dollars_and_is_math_ignored() -> None:
    html = display.steps_table(_steps())._repr_html_()
    assert "$" not in html
    assert "&#36;1.50" in html
    assert 'class="wflo-output tex2jax_ignore mathjax_ignore"' in html
    hostile = display.Table.of(("a", "b"), [("<script>", "$x$ & $y$")])._repr_html_()
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
    assert not DOLLAR_PAIR.search(hostile)


def test_runs_link_each_workflow_to_the_temporal_ui() -> None:
    table = display.steps_table(_steps(), "http://127.0.0.1:8233/", "team ns")
    html = table._repr_html_()
    url = "http://127.0.0.1:8233/namespaces/team%20ns/workflows/wflo-step-a"
    assert f'<a href="{url}" target="_blank" rel="noopener">wflo-step-a</a>' in html
    assert html.count("<a href=") == 1  # the second step has no workflow: no link
    assert table.text().splitlines()[-1] == ("workflows in the Temporal UI: http://127.0.0.1:8233/")
    assert "<a " not in display.steps_table(_steps())._repr_html_()  # no UI known: no links


def test_empty_tables_say_so() -> None:
    assert display.steps_table([]).text().endswith("no steps in this session yet")
    assert "no events yet" in display.events_table([])._repr_html_()


def test_events_table_shows_what_sandbox_cache_and_team_events_say() -> None:
    events = [
        {"type": "sandbox.stopped", "key": "k1", "payload": {"reason": "idle", "image": "i"}},
        {"type": "cache.cleared", "key": "k1", "payload": {"scope": "all", "removed": 3}},
        {"type": "team.joined", "key": "k1", "payload": {"team": "ml"}, "sent": True},
    ]
    text = display.events_table(events).text()
    assert "reason=idle" in text and "image=" not in text
    assert "removed=3, scope=all" in text
    assert "team=ml" in text and "yes" in text and "pending" in text


def test_pretty_printer_shows_the_text_table() -> None:
    from IPython.lib.pretty import pretty

    table = display.status([("postgres", "/tmp/pg"), ("redis", "redis://127.0.0.1:1/0")])
    assert pretty(table) == table.text()
    assert table.text().splitlines()[2].split() == ["postgres", "/tmp/pg"]


def test_budget_lines_plain_and_html() -> None:
    lines = display.budget_states(_states())
    assert lines.text() == (
        "notebook budget $1.00 — spent $0.25, reserved $0.01 (26%)\n"
        "team ml budget $5.00 per day — spent $0.00, reserved $0.00 (0%)"
    )
    html = lines._repr_html_()
    assert "$" not in html and "&#36;1.00" in html and "mathjax_ignore" in html


def test_cache_stats_table() -> None:
    report = CacheReport(CacheStats(hits=3, misses=1, saved_micros=20_000, entries=2), True, 1)
    text = display.cache_stats(report).text()
    assert text.splitlines()[0] == "LLM cache"
    assert re.search(r"^hit rate +75%$", text, re.M) and re.search(r"^saved +\$0\.02$", text, re.M)
    down = CacheReport(CacheStats(0, 0, 0, 0), False, None)
    assert "Redis is unreachable" in display.cache_stats(down).text()
    assert "$" not in display.cache_stats(report)._repr_html_()


def test_notice_is_plain_text_and_a_quiet_html_line() -> None:
    bundle = display.notice_bundle("cache hit: gpt-4o-mini answered at $0, saved $0.0001")
    assert bundle["text/plain"] == "[wflo] cache hit: gpt-4o-mini answered at $0, saved $0.0001"
    assert "$" not in bundle["text/html"]
    assert 'class="wflo-notice tex2jax_ignore mathjax_ignore"' in bundle["text/html"]


def test_meter_view_is_math_ignored() -> None:
    view = (Path(display.__file__).parent / "meter.js").read_text()
    assert '"tex2jax_ignore", "mathjax_ignore"' in view
    assert '"$"' not in view  # dollars are written "\\u0024" (a "$" pair would be TeX)


def test_report_has_no_dollar_columns() -> None:
    from wflo_jupyter.jupyter.report import COST_COLUMNS, CostReport, report_frame

    row = StepCostRow(
        "s" * 36, "x", 1, "step $one$", "completed", datetime(2026, 1, 1), 1500, 1000,
        2, 1, 0, 10, 0, 0, 5, 0, 30, 0, 30, 30,
    )  # fmt: skip
    frame = report_frame([row])
    assert isinstance(frame, CostReport)
    assert not any("$" in str(c) for c in frame.columns)
    assert set(COST_COLUMNS) <= set(frame.columns)
    html = frame._repr_html_()
    assert "tex2jax_ignore" in html and "mathjax_ignore" in html
    assert DOLLAR_PAIR.findall(html) == ["$one$"]  # the step's own name, shown as written
    assert type(frame.head(1)).__name__ == "DataFrame"  # derived frames are plain
    assert report_frame([]).empty


def test_help_lists_every_cell_option_once() -> None:
    documented = [name.split()[0] for name, _ in CELL_OPTIONS]
    parsed = [o for a in _build_parser()._actions for o in a.option_strings]
    assert sorted(documented) == sorted(parsed)


def test_help_lists_every_command_and_its_options() -> None:
    parsers = _parsers()
    assert {name.split()[0] for name, _ in COMMAND_HELP} == set(COMMANDS) == set(parsers)
    for command, parser in parsers.items():
        lines = " ".join(name for name, _ in COMMAND_HELP if name.split()[0] == command)
        for action in parser._actions:
            for option in action.option_strings:
                assert option in lines, f"{command}: {option} is not in the help"


def test_help_is_one_line_each() -> None:
    text = magic_help()
    for name, what in CELL_OPTIONS + COMMAND_HELP:
        assert sum(1 for line in text.splitlines() if name in line and what in line) == 1
    assert "$" not in text


def test_magic_docstring_is_the_help() -> None:
    assert WfloMagics.wflo.__doc__ == magic_help()


def test_every_config_trait_has_help() -> None:
    traits = WfloMagics.class_traits(config=True)
    assert {"budget", "timeout", "memory", "cpus", "image", "retries"} <= set(traits)
    for name, trait in traits.items():
        assert trait.help and len(trait.help.strip()) > 10, f"WfloMagics.{name} has no help"


def test_events_table_says_which_events_are_not_on_kafka_yet() -> None:
    sent = {"type": "step.started", "key": "s1", "payload": {}, "sent": True}
    pending = {**sent, "type": "step.completed", "sent": False}
    table = display.events_table([sent, pending])
    assert table.rows[0][-1] == "yes" and table.rows[1][-1] == "pending"
    assert table.text().endswith("1 of these 2 not on Kafka yet (the relay sends them)")
    assert display.events_table([sent, sent]).footer == "all 2 on Kafka"
    assert display.events_table([pending], kafka=False).footer == (
        "no Kafka configured (WFLO_KAFKA_BOOTSTRAP): events stay in the ledger's outbox"
    )
    assert display.events_table([]).footer == ""
