"""Record real ``CellWorkflow`` histories as replay fixtures.

    WFLO_PROVIDER=mock .venv/bin/python scripts/record_workflow_histories.py

Runs one step of each kind through a real ``WfloSession`` (the local stack, or the
engines ``WFLO_*`` names, and the runtime image) and writes each workflow's history to
``tests/fixtures/workflow_histories/<name>.json``, with ``manifest.json`` saying what
each one is. ``tests/unit/test_workflow_replay.py`` replays them against the current
workflow code: a change that would break a running workflow fails there. Record again
only on purpose (a new kind of run), and keep the old files: they stand for workflows
that may still be running somewhere when the new code is deployed.
"""

from __future__ import annotations

import _thread
import json
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wflo_jupyter.core.steps import StepResult, StepSpec
from wflo_jupyter.session import WfloSession, load_settings

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "workflow_histories"
BASE = StepSpec(
    code="pass",
    budget_micros=None,
    name=None,
    inputs=(),
    outputs=(),
    timeout_s=60.0,
    memory_bytes=512 * 1024**2,
    cpus=1.0,
    pids_limit=256,
    image=os.environ.get("WFLO_RUNTIME_IMAGE", "wflo-runtime:python3.11"),
    retries=0,
)
SLEEPER = "import time\nfor _ in range(600):\n    time.sleep(0.05)"


def interrupted(session: WfloSession, spec: StepSpec, after_s: float) -> StepResult:
    """Run ``spec`` and interrupt it as the notebook does (KeyboardInterrupt on the
    thread that runs the step)."""
    timer = threading.Timer(after_s, _thread.interrupt_main)
    timer.start()
    try:
        result, _io = session.run_step(spec)
    finally:
        timer.cancel()
    return result


def main() -> None:
    os.environ.setdefault("WFLO_PROVIDER", "mock")
    OUT.mkdir(parents=True, exist_ok=True)
    session = WfloSession(load_settings(), notebook_path="replay-fixtures.ipynb")
    runs: dict[str, tuple[str, StepResult]] = {}
    try:
        session.run_step(BASE)  # warm: the sandbox is up before the recorded runs
        lean = replace(BASE, code="x = 1\nprint(x)")
        runs["lean_completed"] = ("lean path, completed", session.run_step(lean)[0])
        error = replace(BASE, code="1 / 0")
        runs["lean_failed"] = ("lean path, the cell raised", session.run_step(error)[0])
        full = replace(BASE, code="y = 2", retries=1)
        runs["full_completed"] = ("full path (--retries 1), completed", session.run_step(full)[0])
        missing = replace(BASE, image="wflo-runtime:no-such-image", retries=1)
        runs["full_retried"] = (
            "full path, the sandbox would not start: retried, then failed",
            session.run_step(missing)[0],
        )
        runs["lean_cancelled"] = (
            "lean path, interrupted",
            interrupted(session, replace(BASE, code=SLEEPER), 1.5),
        )
        runs["full_cancelled"] = (
            "full path (--retries 1), interrupted",
            interrupted(session, replace(BASE, code=SLEEPER, retries=1), 1.5),
        )
        dry = replace(BASE, code="z = 3", estimate=True)
        runs["estimate"] = ("dry run (--estimate)", session.run_step(dry)[0])
        assert session.runner is not None
        runner = session.runner
        manifest = {}
        for name, (what, result) in runs.items():

            async def fetch(workflow_id: str = result.workflow_id) -> str:
                handle = runner.client.get_workflow_handle(workflow_id)
                history = await handle.fetch_history()
                text: str = history.to_json()
                return text

            (OUT / f"{name}.json").write_text(runner.loop.run(fetch(), 30))
            status = runner.describe(result.workflow_id)
            manifest[name] = {
                "what": what,
                "workflow_id": result.workflow_id,
                "workflow_status": status,
                "step_status": result.status,
            }
            print(f"{name:<16} {status:<10} step {result.status:<10} {what}")
        (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        session.close()


if __name__ == "__main__":
    main()
