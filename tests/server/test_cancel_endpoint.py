"""``POST /wflo/api/steps/cancel``: the lab panel's cancel of a running step, through the
server extension and a real Temporal server (the browser test drives it end to end)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.server.test_server_extension import (
    NOTEBOOK,
    _dead_port,
    open_notebook_session,
    recorded_path,
    start,
)
from wflo_jupyter.core.steps import StepResult
from wflo_jupyter.ledger.store import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def post_cancel(jp_fetch: Any, **params: str) -> tuple[int, dict[str, Any]]:
    try:
        response = await jp_fetch(
            "wflo", "api", "steps", "cancel", method="POST", body=b"", params=params
        )
    except HTTPClientError as refused:
        response = refused.response
    assert response is not None
    body = response.body.decode()
    assert "\n" not in body.strip()  # one line
    return response.code, json.loads(body)


async def test_no_token_is_403(server: Any, jp_http_port: int, jp_base_url: str) -> None:
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}wflo/api/steps/cancel"
    url += f"?path=a.ipynb&step={uuid.uuid4()}"
    for headers in ({}, {"Authorization": "token wrong"}):
        response = await AsyncHTTPClient().fetch(
            url, method="POST", body=b"", headers=headers, raise_error=False, request_timeout=10
        )
        assert response.code == 403


@pytest.mark.parametrize(
    ("step", "says"),
    [("", "missing"), ("abc", "not a step id"), ("1" * 36, "not a step id")],
)
async def test_a_malformed_step_id_is_400(
    server: Any, jp_fetch: Any, ledger: Ledger, step: str, says: str
) -> None:
    params = {"path": NOTEBOOK, **({"step": step} if step else {})}
    code, body = await post_cancel(jp_fetch, **params)
    assert code == 400
    assert says in body["message"]


async def test_another_notebooks_or_unknown_step_is_404(
    server: Any, jp_fetch: Any, ledger: Ledger
) -> None:
    other = start(ledger, open_notebook_session(ledger, "other.ipynb"), "theirs")
    for step in (other, str(uuid.uuid4())):
        code, body = await post_cancel(jp_fetch, path=NOTEBOOK, step=step)
        assert code == 404
        assert body["message"] == f"wflo: this notebook ran no step {step}"


async def test_a_finished_step_is_409(server: Any, jp_fetch: Any, ledger: Ledger) -> None:
    step = start(ledger, open_notebook_session(ledger, recorded_path(server)), "done")
    ledger.finish_step(StepResult(step, status="completed", exit_code=0, exit_reason="ok"))
    code, body = await post_cancel(jp_fetch, path=NOTEBOOK, step=step)
    assert code == 409
    assert body["message"] == f"wflo: step {step} is not running (completed)"


async def test_temporal_unreachable_is_503_in_one_line(
    server: Any, jp_fetch: Any, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WFLO_TEMPORAL_ADDRESS", f"127.0.0.1:{_dead_port()}")
    step = start(ledger, open_notebook_session(ledger, recorded_path(server)), "running")
    code, body = await post_cancel(jp_fetch, path=NOTEBOOK, step=step)
    assert code == 503
    assert body["message"].startswith("wflo: Temporal unreachable: Temporal at 127.0.0.1:")


async def test_a_running_step_gets_its_workflow_cancelled(
    server: Any,
    jp_fetch: Any,
    ledger: Ledger,
    temporal_address: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step's workflow (started on a queue no worker polls, so it stays running)
    gets a cancel request in its history: what the kernel's worker acts on."""
    monkeypatch.setenv("WFLO_TEMPORAL_ADDRESS", temporal_address)
    step = start(ledger, open_notebook_session(ledger, recorded_path(server)), "long")
    workflow_id = f"wflo-step-{step}"  # what ``start`` recorded
    client = await Client.connect(temporal_address)
    handle = await client.start_workflow(
        "CellWorkflow",
        {"step_id": step},
        id=workflow_id,
        task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
        execution_timeout=timedelta(minutes=2),
    )
    try:
        code, body = await post_cancel(jp_fetch, path=NOTEBOOK, step=step)
        assert (code, body) == (
            202,
            {"step_id": step, "workflow_id": workflow_id, "cancel": "requested"},
        )
        for _ in range(50):
            history = await handle.fetch_history()
            kinds = [event.event_type for event in history.events]
            if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in kinds:
                break
            await asyncio.sleep(0.1)
        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in kinds
    finally:
        await handle.terminate("test over")
