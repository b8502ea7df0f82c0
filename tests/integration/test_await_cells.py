"""Top-level ``await`` in ``%%wflo`` cells from a real kernel: an ``AsyncOpenAI`` client
made in one cell serves concurrent calls in the next (the session's event loop persists),
a timeout ends an awaiting cell and keeps its state, and warnings name the cell. LLM calls
are answered by the product's offline mock (``WFLO_PROVIDER=mock``)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.kernel_driver import CellRun, Kernel
from tests.marks import LLM_KERNEL

pytestmark = LLM_KERNEL

MARKER = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def kernel_env() -> dict[str, str]:
    return {"WFLO_PROVIDER": "mock"}


def ok(kernel: Kernel, code: str) -> CellRun:
    run = kernel.run(code)
    assert run.status == "ok", (run.error_line, run.stderr[-2000:])
    return run


def test_an_async_client_made_in_one_cell_serves_concurrent_calls_in_the_next(
    kernel: Kernel,
) -> None:
    first = ok(
        kernel,
        "%%wflo --name await-one\n"
        "import asyncio, openai\n"
        "client = openai.AsyncOpenAI()\n"
        "r = await client.chat.completions.create(model='gpt-4o-mini', max_tokens=30,\n"
        f"    messages=[{{'role': 'user', 'content': 'first {MARKER}'}}])\n"
        "print(r.choices[0].message.content)\n",
    )
    assert f"to: first {MARKER}" in first.stdout
    second = ok(
        kernel,
        "%%wflo --name await-eight\n"
        "answers = await asyncio.gather(*[\n"
        "    client.chat.completions.create(model='gpt-4o-mini', max_tokens=30,\n"
        f"        messages=[{{'role': 'user', 'content': f'question {{i}} {MARKER}'}}])\n"
        "    for i in range(8)\n"
        "])\n"
        "for a in answers:\n"
        "    print(a.choices[0].message.content)\n"
        "len(answers)\n",
    )
    lines = second.stdout.splitlines()
    assert len(lines) == 8
    for i, line in enumerate(lines):
        assert line.endswith(f"to: question {i} {MARKER}"), second.stdout
    assert "8" in second.text  # the trailing expression, displayed


def test_a_timeout_ends_an_awaiting_cell_and_keeps_its_state(kernel: Kernel) -> None:
    run = kernel.run(
        "%%wflo --timeout 2\n"
        "import asyncio\n"
        "before_timeout = 'kept'\n"
        "await asyncio.sleep(60)\n"
        "after_timeout = 'never'\n",
        timeout=60,
    )
    assert run.status == "error"
    assert "ran longer than 2 s and was interrupted" in run.error_line, run.error_line
    after = ok(
        kernel,
        "%%wflo\n"
        "print(before_timeout, 'after_timeout' in globals(), await asyncio.sleep(0, 'alive'))\n",
    )
    assert after.stdout == "kept False alive\n"


def test_warnings_name_the_cell(kernel: Kernel) -> None:
    run = ok(
        kernel,
        "%%wflo\n"
        "import asyncio, sys, warnings\n"
        "await asyncio.sleep(0)\n"
        "warnings.warn('old api', DeprecationWarning)\n"
        "print(sys._getframe().f_code.co_filename)\n",
    )
    cell = run.stdout.strip()
    assert re.fullmatch(r"<wflo-cell-\d+>", cell)
    assert f"{cell}:3: DeprecationWarning: old api\n" in run.stderr, run.stderr
    assert "warnings.warn('old api', DeprecationWarning)" in run.stderr
    assert "wflo-agent" not in run.stderr
