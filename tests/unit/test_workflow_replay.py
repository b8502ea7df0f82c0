"""Replay safety: recorded histories of real ``CellWorkflow`` runs replay against the
current workflow code. A change that would break a workflow running when new code is
deployed (a different activity, order or option) fails here, in CI.

The histories (``tests/fixtures/workflow_histories``) were recorded from real runs by
``scripts/record_workflow_histories.py``; ``manifest.json`` says what each one is.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.unit.reordered_workflow import ReorderedCellWorkflow
from wflo_jupyter.orchestration.workflows import CellWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "fixtures" / "workflow_histories"
MANIFEST: dict[str, dict[str, str]] = json.loads((HISTORIES / "manifest.json").read_text())


def history(name: str) -> WorkflowHistory:
    entry = MANIFEST[name]
    return WorkflowHistory.from_json(entry["workflow_id"], (HISTORIES / f"{name}.json").read_text())


def test_fixtures_cover_every_kind_of_run() -> None:
    workflow_states = {entry["workflow_status"] for entry in MANIFEST.values()}
    step_states = {entry["step_status"] for entry in MANIFEST.values()}
    assert workflow_states == {"COMPLETED", "CANCELED"}
    assert step_states == {"completed", "failed", "cancelled"}
    names = set(MANIFEST)
    assert {"lean_completed", "lean_cancelled", "full_retried", "full_cancelled"} <= names
    retried = (HISTORIES / "full_retried.json").read_text()
    assert '"attempt": 2' in retried  # the execute activity really ran twice


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_recorded_history_replays_against_current_code(name: str) -> None:
    result = asyncio.run(
        Replayer(workflows=[CellWorkflow]).replay_workflow(
            history(name), raise_on_replay_failure=False
        )
    )
    assert result.replay_failure is None, f"{name}: {result.replay_failure}"


@pytest.mark.parametrize("name", ["lean_completed", "full_completed"])
def test_a_breaking_change_fails_the_replay(name: str) -> None:
    result = asyncio.run(
        Replayer(workflows=[ReorderedCellWorkflow]).replay_workflow(
            history(name), raise_on_replay_failure=False
        )
    )
    assert result.replay_failure is not None
