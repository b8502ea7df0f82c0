"""Pure domain: money, option parsing, events, and that core stays stdlib-only."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.events import STEP_COMPLETED, Event, topic_for
from wflo_jupyter.core.money import format_usd, micros_to_usd, usd_to_micros
from wflo_jupyter.core.steps import StepDefaults, format_size, parse_size, parse_step_spec


def test_core_and_procfs_load_only_the_standard_library() -> None:
    """Every module of ``core`` (found on disk, so a new one is checked too) and
    ``procfs``, imported in a fresh interpreter, load nothing but the standard library
    and themselves."""
    code = (
        "import importlib, pkgutil, sys, wflo_jupyter.core\n"
        "names = [m.name for m in pkgutil.iter_modules(wflo_jupyter.core.__path__,"
        " 'wflo_jupyter.core.')] + ['wflo_jupyter.procfs']\n"
        "for name in names: importlib.import_module(name)\n"
        "own = {'wflo_jupyter', 'wflo_jupyter.core', 'wflo_jupyter.procfs', *names}\n"
        "print(len(names))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names"
        " and m not in own and not m.startswith('_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, loaded = out.stdout.strip().splitlines()
    assert int(count) >= 9  # money, pricing, budget, steps, events, errors, commands, ...
    assert loaded == "[]"


@pytest.mark.parametrize(
    ("text", "micros"),
    [("0.50", 500_000), ("$1", 1_000_000), ("0.0000001", 1), ("0", 0), ("12.345678", 12_345_678)],
)
def test_usd_to_micros(text: str, micros: int) -> None:
    assert usd_to_micros(text) == micros


@pytest.mark.parametrize("text", ["-0.5", "abc", "nan", "inf", ""])
def test_usd_to_micros_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"budget cannot be negative|not a dollar amount"):
        usd_to_micros(text)


def test_format_usd() -> None:
    assert format_usd(500_000) == "$0.50"
    assert format_usd(123) == "$0.000123"
    assert format_usd(-1_000_000) == "-$1.00"
    assert micros_to_usd(1) == Decimal("0.000001")


def test_sizes() -> None:
    assert parse_size("512m") == 512 * 1024**2
    assert parse_size("1g") == 1024**3
    assert parse_size("2GiB") == 2 * 1024**3
    assert format_size(512 * 1024**2) == "512m"
    with pytest.raises(SpecError, match="not a size"):
        parse_size("lots")


def test_parse_full_spec() -> None:
    spec = parse_step_spec(
        "--budget 0.10 --name fetch --in a,b --out c --timeout 30 --memory 1g --cpus 0.5 "
        "--image img:1 --retries 2 --no-cache --fresh --estimate",
        "print(1)\n",
    )
    assert spec.budget_micros == 100_000
    assert spec.name == "fetch"
    assert spec.inputs == ("a", "b")
    assert spec.outputs == ("c",)
    assert spec.timeout_s == 30
    assert spec.memory_bytes == 1024**3
    assert spec.cpus == 0.5
    assert spec.image == "img:1"
    assert spec.retries == 2
    assert spec.no_cache
    assert spec.fresh
    assert spec.estimate


def test_defaults_apply() -> None:
    spec = parse_step_spec("", "x = 1", StepDefaults(budget_usd="0.25", timeout_s=5, image="i"))
    assert spec.budget_micros == 250_000
    assert spec.timeout_s == 5
    assert spec.image == "i"
    assert spec.fresh is False


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--budget -1", "--budget: a budget cannot be negative"),
        ("--budget abc", "--budget: not a dollar amount"),
        ("--timeout 0", "--timeout: must be a positive"),
        ("--timeout x", "invalid float value"),
        ("--memory 1t", "--memory: not a size"),
        ("--memory 1k", "--memory: at least 16m"),
        ("--cpus -2", "--cpus: must be positive"),
        ("--retries -1", "--retries: cannot be negative"),
        ("--in 1x", "--in: '1x' is not a Python variable name"),
        ("--out class", "--out: 'class' is not a Python variable name"),
        ("--name 'x", "cannot parse options"),
        ("--budg 1", "unrecognized arguments"),
        ("--queue 'gpu box'", "--queue: 'gpu box' is not a task queue name"),
        ("--queue gpu --in x", "--queue gpu: --in/--out values stay in this kernel"),
    ],
)
def test_bad_options_are_one_line(line: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_step_spec(line, "print(1)")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_queue_comes_from_the_cell_or_the_default() -> None:
    assert parse_step_spec("", "pass").queue == ""
    assert parse_step_spec("--queue gpu-box.1", "pass").queue == "gpu-box.1"
    defaults = StepDefaults(queue="shared")
    assert parse_step_spec("", "pass", defaults).queue == "shared"
    assert parse_step_spec("--queue other", "pass", defaults).queue == "other"


def test_empty_cell_is_refused() -> None:
    with pytest.raises(SpecError, match="no code"):
        parse_step_spec("", "   \n")


def test_event_round_trip() -> None:
    event = Event(STEP_COMPLETED, key="s1", payload={"status": "completed", "n": 1})
    assert event.topic == "wflo.steps"
    back = Event.from_json(event.to_json())
    assert back == event
    assert json.loads(event.to_json())["id"] == event.id
    with pytest.raises(ValueError, match="not a wflo event"):
        Event.from_json(b'{"type": 1}')
    with pytest.raises(ValueError, match="no topic"):
        topic_for("nothing.here")


def test_line_commands() -> None:
    from wflo_jupyter.core.commands import parse_line_command

    assert parse_line_command("status").name == "status"
    assert parse_line_command("events -n 5 --all").options == {"limit": 5, "all_sessions": True}
    assert parse_line_command("runs").options == {"limit": 50}
    assert parse_line_command("").name == parse_line_command("  ").name == "help"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("help me", "%wflo help: unrecognized arguments: me"),
        ("events -n 100001", "%wflo events: argument -n: at most 100000, got 100001"),
        ("frobnicate", "%wflo: unknown command 'frobnicate'"),
        ("events -n 0", "%wflo events: argument -n: must be positive, got 0"),
        ("events -n x", "%wflo events: argument -n: not a whole number: 'x'"),
        ("status extra", "%wflo status: unrecognized arguments: extra"),
        ("events '", "%wflo: cannot parse"),
    ],
)
def test_bad_line_commands(line: str, message: str) -> None:
    from wflo_jupyter.core.commands import parse_line_command

    with pytest.raises(SpecError) as info:
        parse_line_command(line)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_budget_commands() -> None:
    from wflo_jupyter.core.commands import parse_line_command

    assert parse_line_command("budget").options == {
        "team": None,
        "period": None,
        "limit_micros": None,
    }
    assert parse_line_command("budget 0.50").options["limit_micros"] == 500_000
    team = parse_line_command("budget --team ml 5 --period day").options
    assert (team["team"], team["limit_micros"], team["period"]) == ("ml", 5_000_000, "day")
    assert parse_line_command("team ml").options == {"name": "ml"}
    assert parse_line_command("cache clear --model gpt-4o").options == {
        "action": "clear",
        "model": "gpt-4o",
        "notebook": False,
    }
    assert parse_line_command("cache clear --notebook").options["notebook"] is True
    assert parse_line_command("report --all").options == {"all_sessions": True}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("budget -1", "%wflo budget: a budget cannot be negative"),
        ("budget lots", "%wflo budget: not a dollar amount: 'lots'"),
        ("budget 1 --period day", "--period applies to a team budget"),
        ("budget --team ml 1 --period week", "invalid choice: 'week'"),
        ("team", "the following arguments are required: name"),
        ("cache purge", "invalid choice: 'purge'"),
        ("cache stats --model x", "--model applies to clear only"),
        ("cache stats --notebook", "--notebook applies to clear only"),
        ("cache clear --model x --notebook", "use --model M or --notebook, not both"),
    ],
)
def test_bad_budget_commands(line: str, message: str) -> None:
    from wflo_jupyter.core.commands import parse_line_command

    with pytest.raises(SpecError) as info:
        parse_line_command(line)
    assert message in str(info.value)
