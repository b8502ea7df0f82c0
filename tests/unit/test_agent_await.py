"""Top-level ``await`` in agent cells, interrupts while awaiting, and warnings that name
the cell: the real agent as a plain subprocess (no container), played by the host of
``test_agent_llm_proxy.py`` over its real channel."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.fakes.providers import FakeProvider
from tests.unit.test_agent_llm_proxy import Cell, Host, start_agent

AGENT_FILES = ("wflo-agent", "sandbox/agent", "async_cells.py", "kernel.py", "agent.py")
FILENAME = "import sys\nme = sys._getframe().f_code.co_filename\n"
"""The first lines of a cell that records its own filename (``<wflo-cell-N>``) in ``me``."""


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    fake = FakeProvider()
    agent = start_agent(fake)
    try:
        yield agent
    finally:
        agent.close()
        fake.close()


def ok(host: Host, code: str) -> Cell:
    cell = host.run(code)
    assert cell.ok, (cell.error, cell.stderr)
    return cell


def results(cell: Cell) -> list[str]:
    return [d["data"]["text/plain"] for d in cell.displays if d["kind"] == "execute_result"]


def assert_no_agent_frames(traceback: str) -> None:
    for marker in (*AGENT_FILES, "asyncio/"):
        assert marker not in traceback, traceback
    assert traceback.startswith('Traceback (most recent call last):\n  File "<wflo-cell-')


def interrupt_while(host: Host, code: str, started: str) -> Cell:
    """Start ``code``, interrupt it once it printed ``started``; its result."""
    cell_id = host.start(code)
    assert host.wait_for(lambda: started in host.output(cell_id), 30), host.output(
        cell_id, "stderr"
    )
    host.send({"type": "interrupt", "id": cell_id})
    return host.result(cell_id, timeout_s=20)  # the cell alone would take 60 s


# ---------------------------------------------------------------------------------------
# top-level await


def test_awaited_values_print_and_a_trailing_await_is_the_cells_result(host: Host) -> None:
    cell = ok(
        host,
        """
        import asyncio
        async def main():
            await asyncio.sleep(0)
            return "from main"
        print(await main())
        await asyncio.sleep(0, result=6 * 7)
        """,
    )
    assert cell.stdout == "from main\n"
    assert results(cell) == ["42"]
    assert results(ok(host, "_ + 1")) == ["43"]  # ``_`` holds the awaited result
    assert results(ok(host, "await asyncio.sleep(0, 'x');")) == []  # ``;`` hides it


def test_async_for_and_async_with_at_the_top_level(host: Host) -> None:
    cell = ok(
        host,
        """
        import asyncio, contextlib
        async def numbers(n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i
        @contextlib.asynccontextmanager
        async def opened(log):
            log.append("enter")
            yield "resource"
            log.append("exit")
        log = []
        async with opened(log) as what:
            total = 0
            async for i in numbers(5):
                total += i
        squares = [i * i async for i in numbers(4)]
        (what, total, squares, log)
        """,
    )
    assert results(cell) == ["('resource', 10, [0, 1, 4, 9], ['enter', 'exit'])"]


def test_the_whole_cell_runs_on_the_loop_when_only_its_last_line_awaits(host: Host) -> None:
    cell = ok(
        host,
        """
        import asyncio
        early = asyncio.get_running_loop()
        await asyncio.sleep(0, "done")
        """,
    )
    assert results(cell) == ["'done'"]


def test_tasks_queues_and_the_loop_persist_across_cells(host: Host) -> None:
    ok(
        host,
        """
        import asyncio
        async def later(value):
            await asyncio.sleep(0.05)
            return value
        task = asyncio.create_task(later("from cell one"))
        queue = asyncio.Queue()
        async def consume():
            got = []
            while (item := await queue.get()) is not None:
                got.append(item)
            return got
        consumer = asyncio.create_task(consume())
        await queue.put(1)
        loop_one = asyncio.get_running_loop()
        """,
    )
    cell = ok(
        host,
        """
        await queue.put(2)
        await queue.put(None)
        (await task, await consumer, asyncio.get_running_loop() is loop_one)
        """,
    )
    assert results(cell) == ["('from cell one', [1, 2], True)"]


def test_plain_cells_do_not_run_on_the_loop_and_asyncio_run_works(host: Host) -> None:
    ok(host, "import asyncio\nawait asyncio.sleep(0)")  # the session's loop exists now
    cell = ok(
        host,
        """
        async def twice(x):
            await asyncio.sleep(0.01)
            return 2 * x
        (asyncio.run(twice(21)), asyncio.run(twice(1)))
        """,
    )
    assert results(cell) == ["(42, 2)"]
    cell = ok(
        host, "await asyncio.sleep(0, asyncio.get_running_loop() is asyncio.get_event_loop())"
    )
    assert results(cell) == ["True"]  # the session's loop is current again after asyncio.run


def test_syntax_errors_stay_clean(host: Host) -> None:
    cell = host.run("def f():\n    await g()\n")
    assert not cell.ok
    assert cell.error is not None
    assert cell.error["ename"] == "SyntaxError"
    assert "'await' outside async function" in cell.error["evalue"]
    assert re.fullmatch(
        r'  File "<wflo-cell-\d+>", line 2\n(.*\n)*SyntaxError: .*\n', cell.error["traceback"]
    )
    cell = host.run("x = = 1")
    assert cell.error is not None
    assert cell.error["ename"] == "SyntaxError"
    assert_no_agent_frames("Traceback (most recent call last):\n" + cell.error["traceback"])


def test_an_awaited_exception_has_only_the_cells_frames(host: Host) -> None:
    cell = host.run(
        """
        import asyncio
        async def inner():
            await asyncio.sleep(0)
            raise ValueError("bad value")
        await asyncio.gather(inner())
        """
    )
    assert cell.error is not None
    assert cell.error["ename"] == "ValueError"
    assert_no_agent_frames(cell.error["traceback"])
    assert "await asyncio.gather(inner())" in cell.error["traceback"]
    assert 'raise ValueError("bad value")' in cell.error["traceback"]
    assert cell.stderr == ""  # no "Task exception was never retrieved"


# ---------------------------------------------------------------------------------------
# interrupts


def test_an_interrupt_stops_an_await_promptly_and_the_loop_goes_on(host: Host) -> None:
    cell = interrupt_while(
        host,
        """
        import asyncio, functools
        before = "kept"
        child = asyncio.ensure_future(asyncio.sleep(60))
        # printed by the loop once the cell waits (C code only: no frame to interrupt)
        asyncio.get_running_loop().call_soon(functools.partial(print, "waiting", flush=True))
        try:
            await asyncio.gather(child)
        finally:
            cleaned_up = True
        after = "never"
        """,
        "waiting",
    )
    assert cell.error is not None
    assert cell.error["ename"] == "KeyboardInterrupt"
    assert_no_agent_frames(cell.error["traceback"])
    assert "await asyncio.gather(child)" in cell.error["traceback"]
    cell = ok(
        host,
        """
        state = (before, cleaned_up, "after" in globals(), child.cancelled())
        await asyncio.sleep(0.01, state)
        """,
    )
    assert results(cell) == ["('kept', True, False, True)"]


def test_an_interrupt_stops_cell_code_that_never_yields(host: Host) -> None:
    cell = interrupt_while(
        host,
        """
        import asyncio
        await asyncio.sleep(0)
        print("spinning", flush=True)
        while True:
            pass
        """,
        "spinning",
    )
    assert cell.error is not None
    assert cell.error["ename"] == "KeyboardInterrupt"
    assert_no_agent_frames(cell.error["traceback"])
    assert results(ok(host, "await asyncio.sleep(0, 'alive')")) == ["'alive'"]


def test_an_interrupt_during_a_blocking_call_in_an_awaiting_cell(host: Host) -> None:
    cell = interrupt_while(
        host,
        """
        import asyncio, time
        await asyncio.sleep(0)
        print("blocking", flush=True)
        time.sleep(60)
        """,
        "blocking",
    )
    assert cell.error is not None
    assert cell.error["ename"] == "KeyboardInterrupt"
    assert_no_agent_frames(cell.error["traceback"])
    assert results(ok(host, "await asyncio.sleep(0, 'alive')")) == ["'alive'"]


# ---------------------------------------------------------------------------------------
# warnings


def warning_lines(cell: Cell) -> tuple[str, list[str]]:
    """The cell's own filename (printed by it) and its stderr lines."""
    return cell.stdout.strip(), cell.stderr.splitlines()


@pytest.mark.parametrize("awaiting", [False, True], ids=["plain", "awaiting"])
def test_warnings_name_the_cell_and_its_line(host: Host, awaiting: bool) -> None:
    code = FILENAME + (
        "import asyncio, warnings\n"
        f"{'await asyncio.sleep(0)' if awaiting else 'pass'}\n"
        'warnings.warn("direct", DeprecationWarning)\n'
        "def library():\n"
        '    warnings.warn("from a library", UserWarning, stacklevel=2)\n'
        "library()\n"
        "print(me)\n"
    )
    first = ok(host, code)
    me, lines = warning_lines(first)
    assert re.fullmatch(r"<wflo-cell-\d+>", me)
    assert lines == [
        f"{me}:5: DeprecationWarning: direct",
        '  warnings.warn("direct", DeprecationWarning)',
        f"{me}:8: UserWarning: from a library",
        "  library()",
    ]
    again, lines = warning_lines(ok(host, code))  # the same lines of another cell: shown too
    assert again != me
    assert lines[0] == f"{again}:5: DeprecationWarning: direct"


def test_a_stacklevel_past_the_cell_still_names_the_cell(host: Host) -> None:
    for first_line in ("pass", "import asyncio; await asyncio.sleep(0)"):
        cell = ok(
            host,
            FILENAME
            + f"{first_line}\n"
            + "import warnings\n"
            + "def library():\n"
            + '    warnings.warn("too far", DeprecationWarning, stacklevel=3)\n'
            + "library()\n"
            + "print(me)\n",
        )
        me, lines = warning_lines(cell)
        assert lines == [f"{me}:0: DeprecationWarning: too far"], cell.stderr


def test_an_interrupt_stops_asyncio_run_in_a_plain_cell(host: Host) -> None:
    cell = interrupt_while(
        host,
        """
        import asyncio
        async def forever():
            print("running", flush=True)
            await asyncio.sleep(60)
        asyncio.run(forever())
        """,
        "running",
    )
    assert cell.error is not None
    assert cell.error["ename"] == "KeyboardInterrupt"
    assert results(ok(host, "await asyncio.sleep(0, 'alive')")) == ["'alive'"]


def test_exit_in_an_awaiting_cell_ends_the_cell_not_the_agent(host: Host) -> None:
    cell = host.run("import asyncio, sys\nawait asyncio.sleep(0)\nsys.exit(3)\n")
    assert cell.error is not None
    assert cell.error["ename"] == "SystemExit"
    ok(host, "import asyncio, sys\nawait asyncio.sleep(0)\nsys.exit(0)\n")
    assert results(ok(host, "await asyncio.sleep(0, 'alive')")) == ["'alive'"]
