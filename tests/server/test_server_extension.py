"""The Jupyter server extension against a real jupyter_server (pytest-jupyter) and the
real PostgreSQL: a notebook's budgets and steps as the ledger holds them, the live event
stream (one listener, fed by NOTIFY), authentication on every endpoint, malformed input,
an unreachable ledger and its recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.server.sse import EventStream
from wflo_jupyter.core.pricing import Usage
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.calls import LlmCall
from wflo_jupyter.ledger.reports import step_costs
from wflo_jupyter.ledger.store import Ledger, with_database
from wflo_jupyter.stack.local import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NOTEBOOK = "reports/q3.ipynb"
ENDPOINTS = ("budgets", "steps", "events")


def recorded_path(jp_serverapp: Any, path: str = NOTEBOOK) -> str:
    """What a kernel JupyterLab starts for ``path`` records as its notebook path:
    jupyter_server's own ``JPY_SESSION_NAME`` for a named session (as JupyterLab's), for
    a notebook that exists (the kernel's directory is the notebook's)."""
    notebook = Path(jp_serverapp.root_dir) / path
    notebook.parent.mkdir(parents=True, exist_ok=True)
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    env = jp_serverapp.session_manager.get_kernel_env(path, Path(path).name)
    return str(env["JPY_SESSION_NAME"])


def open_notebook_session(ledger: Ledger, notebook_path: str) -> str:
    session_id = str(uuid.uuid4())
    ledger.open_session(session_id, notebook_path=notebook_path)
    return session_id


def start(ledger: Ledger, session_id: str, name: str) -> str:
    step_id = str(uuid.uuid4())
    ledger.start_step(
        step_id=step_id,
        session_id=session_id,
        name=name,
        code="print(1)",
        budget_micros=None,
        workflow_id=f"wflo-step-{step_id}",
        image="img",
    )
    return step_id


def spend(budgets: BudgetLedger, scopes: list[tuple[str, str]], step_id: str, micros: int) -> None:
    reservation = budgets.reserve(scopes, micros * 2, step_id=step_id)
    budgets.settle(reservation, micros, call=LlmCall("openai", "gpt-4o-mini", "chat"))


async def get_json(jp_fetch: Any, endpoint: str, **params: str) -> Any:
    response = await jp_fetch("wflo", "api", endpoint, params=params)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def events_url(server: Any, path: str = NOTEBOOK) -> str:
    from urllib.parse import urlencode

    return f"{server.base_url}wflo/api/events?{urlencode({'path': path})}"


# -- budgets and steps ---------------------------------------------------------------------
async def test_budgets_of_a_notebook_are_the_ledgers(
    server: Any, jp_fetch: Any, ledger: Ledger, budgets: BudgetLedger
) -> None:
    key = recorded_path(server)
    assert key == str(Path(server.root_dir) / NOTEBOOK)  # absolute: not the lab's path
    budgets.set_budget("notebook", key, 1_000_000)
    budgets.set_budget("team", "research", 5_000_000, "month")
    budgets.set_budget("team", "unrelated", 9_000_000)
    step = start(ledger, open_notebook_session(ledger, key), "load")
    scopes = [("notebook", key), ("team", "research")]
    spend(budgets, scopes, step, 123_456)
    budgets.reserve(scopes, 50_000, step_id=step)  # held: in flight

    body = await get_json(jp_fetch, "budgets", path=NOTEBOOK)

    assert body["path"] == NOTEBOOK
    assert [(b["kind"], b["key"]) for b in body["budgets"]] == [
        ("notebook", key),
        ("team", "research"),
    ]
    for shown in body["budgets"]:
        truth = budgets.state(shown["kind"], shown["key"])
        assert shown["limit_micros"] == truth.limit_micros
        assert shown["spent_micros"] == truth.spent_micros == 123_456
        assert shown["reserved_micros"] == truth.reserved_micros == 50_000
    notebook, team = body["budgets"]
    assert (notebook["limit_usd"], notebook["spent_usd"], notebook["reserved_usd"]) == (
        "$1.00",
        "$0.123456",
        "$0.05",
    )
    assert team["name"] == "team research" and team["period"] == "month"
    assert team["available_micros"] == 5_000_000 - 123_456 - 50_000


async def test_a_notebook_without_sessions_has_no_budgets_or_steps(
    server: Any, jp_fetch: Any, ledger: Ledger
) -> None:
    assert (await get_json(jp_fetch, "budgets", path="never/run.ipynb"))["budgets"] == []
    assert (await get_json(jp_fetch, "steps", path="never/run.ipynb"))["steps"] == []


async def test_steps_of_a_notebook_newest_first_with_costs(
    server: Any, jp_fetch: Any, ledger: Ledger, budgets: BudgetLedger
) -> None:
    key = recorded_path(server)
    budgets.set_budget("notebook", key, 1_000_000)
    first_session = open_notebook_session(ledger, key)
    first = start(ledger, first_session, "load")
    spend(budgets, [("notebook", key)], first, 20_000)
    hit = LlmCall("openai", "gpt-4o-mini", "chat", Usage(input=10), saved_micros=7_000, cached=True)
    budgets.record_cached_call(first, hit)
    ledger.finish_step(StepResult(step_id=first, status="completed", exit_code=0, exit_reason="ok"))
    other_notebook = start(ledger, open_notebook_session(ledger, "/elsewhere.ipynb"), "x")
    second = start(ledger, open_notebook_session(ledger, key), "summarise")  # a new kernel

    body = await get_json(jp_fetch, "steps", path=NOTEBOOK)

    steps = body["steps"]
    assert [s["id"] for s in steps] == [second, first]
    assert other_notebook not in {s["id"] for s in steps}
    running, done = steps
    assert running["status"] == "running" and running["ended_at"] is None
    truth = step_costs(ledger.engine, step_ids=[first])[0]
    assert done["status"] == "completed"
    assert done["cost_micros"] == truth.cost_micros == 20_000
    assert done["cost_usd"] == "$0.02"
    assert (done["cached_calls"], done["saved_micros"], done["saved_usd"]) == (1, 7_000, "$0.007")
    assert done["calls"] == 2
    assert done["duration_ms"] is not None and done["ended_at"] is not None
    assert done["workflow_id"] == f"wflo-step-{first}"
    assert done["temporal_url"] == (
        f"http://127.0.0.1:8233/namespaces/default/workflows/wflo-step-{first}"
    )
    limited = await get_json(jp_fetch, "steps", path=NOTEBOOK, limit="1")
    assert [s["id"] for s in limited["steps"]] == [second]


async def test_a_cancelled_step_is_cancelled_in_the_json(
    server: Any, jp_fetch: Any, ledger: Ledger
) -> None:
    key = recorded_path(server)
    step = start(ledger, open_notebook_session(ledger, key), "interrupted")
    ledger.finish_step(StepResult.of_cancel(step, state_lost=False, seconds=0.5))
    steps = (await get_json(jp_fetch, "steps", path=NOTEBOOK))["steps"]
    cancelled = next(s for s in steps if s["id"] == step)
    assert (cancelled["status"], cancelled["ended_at"] is not None) == ("cancelled", True)


# -- the event stream --------------------------------------------------------------------
async def test_the_stream_delivers_settles_made_elsewhere(
    server: Any,
    jp_http_port: int,
    jp_auth_header: dict[str, str],
    ledger: Ledger,
    budgets: BudgetLedger,
    fresh_database_url: str,
) -> None:
    key = recorded_path(server)
    budgets.set_budget("notebook", key, 100_000_000)
    budgets.set_budget("team", "research", 100_000_000)
    session = open_notebook_session(ledger, key)
    step = start(ledger, session, "warm-up")
    spend(budgets, [("notebook", key), ("team", "research")], step, 1)  # joins the team

    stream = await EventStream.open(jp_http_port, events_url(server), jp_auth_header)
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    hub = server.web_app.settings["wflo_hub"]
    try:
        await stream.next_event("resync")  # the listener is connected
        heartbeat = await stream.next(5)
        assert heartbeat.comment == "heartbeat"

        # a step of this notebook starting is announced
        loop = asyncio.get_running_loop()
        started = await loop.run_in_executor(None, start, ledger, session, "live")
        message = await stream.next_event("step")
        assert message.json() == {"type": "step", "step_id": started, "status": "running"}

        # 20 settles by another connection (another kernel's ledger): each arrives. The
        # time is from just before the settle call (its own round trip included) to the
        # event's arrival at this client, read by a task of its own.
        messages = stream.collect()
        other = BudgetLedger.connect(fresh_database_url, migrate=False)
        latencies: list[float] = []
        try:
            spent = budgets.state("notebook", key).spent_micros
            for i in range(20):
                amount = 1_000 + i
                notebook_too = bool(i % 2)  # odd: the notebook and its team; even: the team
                scopes = (
                    [("notebook", key), ("team", "research")]
                    if notebook_too
                    else [("team", "research")]
                )
                reservation = await loop.run_in_executor(
                    None, lambda s=scopes, a=amount: other.reserve(s, a * 2, step_id=started)
                )
                before = time.monotonic()
                await loop.run_in_executor(None, other.settle, reservation, amount)
                kind = "notebook" if notebook_too else "team"
                while True:
                    message = await asyncio.wait_for(messages.get(), 5)
                    if message.event != "budget":
                        continue
                    budget = message.json()["budget"]
                    if budget["kind"] == kind and budget["reserved_micros"] == 0:
                        break
                latencies.append(message.at - before)
                if notebook_too:
                    spent += amount
                    assert budget["spent_micros"] == spent
                    assert budget["spent_usd"].startswith("$")
        finally:
            other.close()
        p50 = statistics.median(latencies)
        p95 = statistics.quantiles(latencies, n=20)[18]
        print(
            f"\nsettle -> SSE event over 20 settles: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
        )
        assert len(latencies) == 20
        assert hub.subscribers() == 1
    finally:
        stream.close()
    await asyncio.sleep(0)
    deadline = time.monotonic() + 5
    while hub.subscribers() and time.monotonic() < deadline:  # the client left
        await asyncio.sleep(0.05)
    assert hub.subscribers() == 0 and not hub.listening()


async def test_one_listener_serves_every_stream(
    server: Any,
    jp_http_port: int,
    jp_auth_header: dict[str, str],
    ledger: Ledger,
    budgets: BudgetLedger,
) -> None:
    key = recorded_path(server)
    budgets.set_budget("notebook", key, 1_000_000)
    step = start(ledger, open_notebook_session(ledger, key), "a")
    streams = [
        await EventStream.open(jp_http_port, events_url(server), jp_auth_header) for _ in range(3)
    ]
    try:
        for stream in streams:
            await stream.next_event("resync")
        await asyncio.get_running_loop().run_in_executor(
            None, spend, budgets, [("notebook", key)], step, 5_000
        )
        for stream in streams:
            while (budget := (await stream.next_event("budget")).json()["budget"])[
                "reserved_micros"
            ]:
                pass
            assert budget["spent_micros"] == 5_000
        import threading

        listeners = [t for t in threading.enumerate() if t.name == "wflo-ledger-listener"]
        assert len(listeners) == 1
    finally:
        for stream in streams:
            stream.close()


# -- authentication and input -------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_no_token_is_403(
    server: Any, jp_http_port: int, jp_base_url: str, ledger: Ledger, endpoint: str
) -> None:
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}wflo/api/{endpoint}?path=a.ipynb"
    response = await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10)
    assert response.code == 403
    wrong = await AsyncHTTPClient().fetch(
        url, raise_error=False, headers={"Authorization": "token wrong"}, request_timeout=10
    )
    assert wrong.code == 403
    stream = await EventStream.open(
        jp_http_port, f"{jp_base_url}wflo/api/{endpoint}?path=a.ipynb", {}
    )
    stream.close()
    assert stream.status == 403


BAD_PATHS = [
    ("", "missing"),
    ("/etc/passwd", "relative"),
    ("../secret.ipynb", "'..'"),
    ("a/../../b.ipynb", "'..'"),
    ("a//b.ipynb", "empty"),
    ("./a.ipynb", "'.'"),
    ("a\x00b.ipynb", "control character"),
    ("a\nb.ipynb", "control character"),
    ("x" * 1025, "longer than 1024"),
    ("C:/x.ipynb", "relative"),
    ("a\\b.ipynb", "/ between folders"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("path", "says"), BAD_PATHS)
async def test_a_malformed_path_is_400(
    server: Any, jp_fetch: Any, ledger: Ledger, endpoint: str, path: str, says: str
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("wflo", "api", endpoint, params={"path": path} if path else {})
    response = caught.value.response
    assert caught.value.code == 400
    assert response is not None
    body = response.body.decode()
    assert "\n" not in body.strip()
    assert says in json.loads(body)["message"]


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "1.5", "9999999999", "", "\u0661"])
async def test_a_malformed_limit_is_400(
    server: Any, jp_fetch: Any, ledger: Ledger, limit: str
) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("wflo", "api", "steps", params={"path": NOTEBOOK, "limit": limit})
    assert caught.value.code == 400
    assert caught.value.response is not None
    assert "limit" in json.loads(caught.value.response.body)["message"]


# -- an unreachable ledger -----------------------------------------------------------------
def _dead_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_dead_ledger_is_503_in_one_line_and_logged_once(
    server: Any,
    jp_fetch: Any,
    jp_http_port: int,
    jp_auth_header: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("WFLO_DATABASE_URL", f"postgresql://wflo@127.0.0.1:{_dead_port()}/wflo")
    caplog.set_level(logging.INFO, logger="wflo_jupyter")
    for _ in range(3):
        for endpoint in ("budgets", "steps"):
            with pytest.raises(HTTPClientError) as caught:
                await jp_fetch("wflo", "api", endpoint, params={"path": NOTEBOOK})
            assert caught.value.code == 503
            assert caught.value.response is not None
            assert caught.value.response.body == b'{"message": "wflo: ledger unreachable"}'
        stream = await EventStream.open(jp_http_port, events_url(server), jp_auth_header)
        stream.close()
        assert stream.status == 503
        assert json.loads(stream.body) == {"message": "wflo: ledger unreachable"}
    said = [r for r in caplog.records if "ledger unreachable" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    # the server itself keeps working
    assert (await jp_fetch("api", "status")).code == 200


async def test_the_extension_recovers_when_postgres_returns(
    server: Any,
    jp_fetch: Any,
    jp_http_port: int,
    jp_auth_header: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    private = LocalStack(tmp_path / "pg")
    url = with_database(private.up(only=["postgres"])["postgres"].url, "wflo")
    monkeypatch.setenv("WFLO_DATABASE_URL", url)
    try:
        ledger = Ledger.connect(url)
        key = recorded_path(server)
        ledger_budgets = BudgetLedger(ledger.engine)
        ledger_budgets.set_budget("notebook", key, 2_000_000)
        ledger_budgets.close()
        ledger.close()
        assert (await get_json(jp_fetch, "budgets", path=NOTEBOOK))["budgets"][0][
            "limit_micros"
        ] == 2_000_000
        stream = await EventStream.open(jp_http_port, events_url(server), jp_auth_header)
        try:
            await stream.next_event("resync")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, private.down)
            assert (await stream.next_event("unreachable", 15)).json()["message"] == (
                "wflo: ledger unreachable"
            )
            with pytest.raises(HTTPClientError) as caught:
                await jp_fetch("wflo", "api", "budgets", params={"path": NOTEBOOK})
            assert caught.value.code == 503

            await loop.run_in_executor(None, lambda: private.up(only=["postgres"]))
            await stream.next_event("resync", 20)  # the listener is back by itself
            body = await get_json(jp_fetch, "budgets", path=NOTEBOOK)
            assert body["budgets"][0]["limit_micros"] == 2_000_000

            again = BudgetLedger.connect(url, migrate=False)
            try:
                await loop.run_in_executor(None, again.set_budget, "notebook", key, 3_000_000)
            finally:
                again.close()
            budget = (await stream.next_event("budget")).json()["budget"]
            assert budget["limit_micros"] == 3_000_000
        finally:
            stream.close()
    finally:
        private.down()
