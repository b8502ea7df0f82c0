"""The ledger's PostgreSQL goes away under a notebook (a private instance, stopped and
started again by the tests): cells are refused in one line, an LLM call in flight gets 503
and its SDK's own retry succeeds once it is back, a step's close waits for it, and the
notebook hears one notice when it goes and one when it is back, nothing else."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.event_audit import EVENT_AUDIT
from tests.fakes.providers import FakeProvider
from tests.helpers import wait_until
from tests.integration.test_gateway import Collected, chat
from tests.kernel_driver import CellRun, Kernel
from wflo_jupyter.core.budget import BudgetScope
from wflo_jupyter.gateway.service import CallContext, GatewayRequest, LlmGateway
from wflo_jupyter.gateway.upstream import ProviderRoutes, Upstream
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.health import ledger_address, refusal_line
from wflo_jupyter.ledger.pricing import PriceBook
from wflo_jupyter.ledger.store import Ledger, with_database
from wflo_jupyter.stack.local import LocalStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.kernel,
    pytest.mark.docker,
    pytest.mark.temporal,
]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PrivateLedger:
    """A PostgreSQL of this module's own (never the machine's shared one)."""

    def __init__(self, home: Path) -> None:
        self.stack = LocalStack(home)
        self.url = with_database(self.stack.up(only=["postgres"])["postgres"].url, "wflo")
        self.address = ledger_address(self.url)

    def stop(self) -> None:
        """A clean stop (``wflo down``)."""
        self.stack.down()

    def kill(self) -> None:
        """SIGKILL the server: its clients' connections break off mid-flight."""
        os.kill(self.stack.engines()["postgres"].pid, signal.SIGKILL)

    def start(self) -> None:
        started = self.stack.up(only=["postgres"])["postgres"].url
        assert ledger_address(started) == self.address  # it came back where it was


@pytest.fixture(scope="module")
def private(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[PrivateLedger]:
    ledger = PrivateLedger(tmp_path_factory.mktemp("outage-pg"))
    Ledger.connect(ledger.url).close()  # the database and its schema
    yield ledger
    ledger.start()
    pytestconfig.stash[EVENT_AUDIT].check_database(ledger.url)
    ledger.stop()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


def _down_notice(address: str) -> str:
    return (
        f"[wflo] PostgreSQL (the wflo ledger) at {address} is unreachable: LLM calls get "
        "HTTP 503 and the SDK retries them, new cells are refused, and this step's record "
        "is written when it is back; start it with `wflo up`, or point WFLO_DATABASE_URL "
        "at the configured address\n"
    )


def _back_notice(address: str) -> str:
    return rf"\[wflo\] PostgreSQL \(the wflo ledger\) at {re.escape(address)} is back after \d+ s: cells run again\n"


def _outage_notices(run: CellRun) -> list[str]:
    """The cell's notices about the ledger (its cost lines aside): exactly two expected."""
    lines = [n for n in run.notices.splitlines(keepends=True) if "PostgreSQL" in n]
    assert len(lines) == 2, run.notices
    return lines


def _clean(run: CellRun) -> None:
    """No traceback, ANSI escape or library log line in what the cell printed."""
    printed = run.stdout + run.stderr + run.text
    assert "Traceback" not in printed, printed
    assert not ANSI.search(printed), printed
    assert run.stderr == "", run.stderr


def _step(url: str, session_id: str, name: str) -> tuple[str, int | None, int]:
    """(status, sandbox_ms, LLM calls recorded) of the session's step ``name``."""
    ledger = Ledger.connect(url, migrate=False)
    try:
        row = next(s for s in ledger.steps(session_id) if s.name == name)
        with ledger.engine.connect() as conn:
            calls = conn.execute(
                text("SELECT count(*) FROM llm_calls WHERE step_id = :s"), {"s": row.id}
            ).scalar_one()
        return row.status, row.sandbox_ms, int(calls)
    finally:
        ledger.close()


def test_gateway_answers_503_with_retry_after_while_the_ledger_is_down(
    private: PrivateLedger, fake: FakeProvider
) -> None:
    routes = ProviderRoutes.from_env(
        {
            "OPENAI_API_KEY": "sk-host-secret",
            "WFLO_OPENAI_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-host",
            "WFLO_ANTHROPIC_BASE_URL": fake.url,
        }
    )
    budgets = BudgetLedger.connect(private.url)
    gateway = LlmGateway(
        routes=routes, upstream=Upstream(routes), budgets=budgets, prices=PriceBook()
    )
    outages: list[float] = []
    gateway.on_ledger_outage = lambda: outages.append(time.monotonic())
    notebook = f"outage-{uuid.uuid4().hex[:8]}"
    budgets.set_budget("notebook", notebook, 10**9)
    ctx = CallContext(step_id=None, scopes=(BudgetScope("notebook", notebook),))
    anthropic = GatewayRequest(
        "anthropic",
        "messages",
        "/v1/messages",
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    before = len(fake.requests)
    try:
        private.stop()
        try:
            openai_reply, anthropic_reply = Collected(), Collected()
            gateway.handle(chat("while down", max_tokens=20), ctx, openai_reply)
            gateway.handle(anthropic, ctx, anthropic_reply)
        finally:
            private.start()
        for reply in (openai_reply, anthropic_reply):
            assert reply.status == 503
            assert reply.headers["retry-after"] == "5"
            assert reply.headers["x-should-retry"] == "true"
        error = openai_reply.json()["error"]
        assert error["code"] == "ledger_unavailable"
        assert error["message"].startswith("LedgerUnavailable: the wflo ledger (PostgreSQL)")
        assert anthropic_reply.json()["error"]["type"] == "overloaded_error"
        assert "ledger (PostgreSQL)" in anthropic_reply.json()["error"]["message"]
        assert len(outages) == 2
        assert len(fake.requests) == before  # nothing unbudgeted reached the provider
        back = Collected()
        gateway.handle(chat("after", max_tokens=20), ctx, back)
        assert back.status == 200, back.body
        assert len(fake.requests) == before + 1
    finally:
        gateway.close()
        budgets.close()


def test_cells_refused_in_one_line_while_down_and_run_when_back(
    private: PrivateLedger, make_kernel: Callable[..., Kernel]
) -> None:
    kernel = make_kernel({"WFLO_DATABASE_URL": private.url})
    assert kernel.run("%%wflo --name before\nprint('before')").stdout == "before\n"
    private.stop()
    try:
        refused = []
        for _ in range(2):
            began = time.monotonic()
            refused.append(kernel.run("%%wflo --name while-down\nprint('ran')", timeout=60))
            assert time.monotonic() - began < 5
    finally:
        private.start()
    line = f"LedgerUnavailable: {refusal_line(private.address)}"
    assert "PostgreSQL" in line and private.address in line and "wflo up" in line
    for run in refused:
        assert run.status == "error" and run.error is not None
        assert run.error_line == line
        assert [ANSI.sub("", t) for t in run.error["traceback"]] == [line]  # no traceback
        assert run.stdout == "" and run.notices == ""  # the refusal is the notice
        _clean(run)
    after = kernel.run("%%wflo --name after\nprint('after')", timeout=120)
    assert after.status == "ok", after.error
    assert after.stdout == "after\n"
    assert re.fullmatch(_back_notice(private.address), after.notices), after.notices
    _clean(after)
    again = kernel.run("%%wflo --name again\nprint('again')")
    assert again.stdout == "again\n" and again.notices == ""
    session_id = kernel.wflo_session_id()
    kernel.close()
    assert _step(private.url, session_id, "after")[0] == "completed"
    names = [s.name for s in Ledger.connect(private.url, migrate=False).steps(session_id)]
    assert "while-down" not in names  # refused before it started: nothing recorded


def test_llm_call_during_outage_is_retried_by_the_sdk(
    private: PrivateLedger, make_kernel: Callable[..., Kernel], fake: FakeProvider
) -> None:
    kernel = make_kernel(
        {
            "WFLO_DATABASE_URL": private.url,
            "OPENAI_API_KEY": "sk-host-secret",
            "WFLO_OPENAI_BASE_URL": fake.base_url,
        }
    )
    marker = uuid.uuid4().hex[:8]
    code = (
        "%%wflo --name llm-outage\n"
        "import time\n"
        "from openai import OpenAI\n"
        "client = OpenAI(max_retries=10)\n"
        "def ask(words):\n"
        "    return client.chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
        "        messages=[{'role': 'user', 'content': words}]).choices[0].message.content\n"
        f"print(ask('first {marker}'))\n"
        "time.sleep(6)\n"
        f"print(ask('second {marker}'))\n"
    )
    before = len(fake.requests)
    running = kernel.submit(code)
    wait_until(lambda: len(fake.requests) > before, 120, what="the first call")
    private.kill()
    time.sleep(10)  # the second call meets the outage: 503, the SDK waits and retries
    private.start()
    run = kernel.collect(running, timeout=180)
    assert run.status == "ok", run.error
    assert run.stdout == f"echo: first {marker}\necho: second {marker}\n"
    down, back = _outage_notices(run)
    assert down == _down_notice(private.address)
    assert re.fullmatch(_back_notice(private.address), back)
    _clean(run)
    assert len(fake.requests) == before + 2  # the refused attempts never reached it
    session_id = kernel.wflo_session_id()
    status, sandbox_ms, calls = _step(private.url, session_id, "llm-outage")
    assert (status, calls) == ("completed", 2)
    assert sandbox_ms is not None and sandbox_ms > 6000


def test_step_closed_when_the_ledger_is_back_with_one_notice_each_way(
    private: PrivateLedger, make_kernel: Callable[..., Kernel]
) -> None:
    kernel = make_kernel({"WFLO_DATABASE_URL": private.url})
    session_id = kernel.wflo_session_id()
    running = kernel.submit("%%wflo --name closes-late\nimport time\ntime.sleep(4)\nprint('done')")
    ledger = Ledger.connect(private.url, migrate=False)
    try:
        wait_until(
            lambda: "closes-late" in {s.name for s in ledger.steps(session_id)},
            60,
            interval=0.05,
            what="the step to be recorded",
        )
    finally:
        ledger.close()
    private.kill()
    time.sleep(10)  # the cell ends while the ledger is away: its close is retried
    private.start()
    returned = time.monotonic()
    run = kernel.collect(running, timeout=120)
    assert time.monotonic() - returned < 10  # closed within seconds of its return
    assert run.status == "ok", run.error
    assert run.stdout == "done\n"
    down, back = _outage_notices(run)
    assert down == _down_notice(private.address)
    assert re.fullmatch(_back_notice(private.address), back)
    _clean(run)
    status, sandbox_ms, _calls = _step(private.url, session_id, "closes-late")
    assert status == "completed"  # never left running
    assert sandbox_ms is not None and sandbox_ms >= 4000  # its sandbox seconds were kept
    after = kernel.run("%%wflo --name next\nprint('next')")
    assert after.stdout == "next\n" and after.notices == ""
