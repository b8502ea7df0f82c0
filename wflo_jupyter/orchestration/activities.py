"""``StepActivities``: the activities of ``CellWorkflow``, methods on a class built with
the session's ledger and sandbox."""

from __future__ import annotations

from collections.abc import Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import StepInput, StepResult
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.sandbox.docker_runner import DockerSandbox


def _error_from_stderr(stderr: str) -> tuple[str, str]:
    """Exception name and message from the last line of a Python traceback."""
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("[wflo]"):
            continue
        name, sep, value = line.partition(":")
        if sep and name.replace(".", "").replace("_", "").isalnum() and " " not in name:
            return name.strip(), value.strip()
        return "", line.strip()
    return "", ""


class StepActivities:
    """Ledger and sandbox work of one step; ``on_change`` runs after each ledger write."""

    def __init__(
        self,
        ledger: Ledger,
        sandbox: DockerSandbox,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.sandbox = sandbox
        self.on_change = on_change or (lambda: None)

    @activity.defn(name="open_step")
    def open_step(self, step: StepInput) -> int:
        seq = self.ledger.start_step(
            step_id=step.step_id,
            session_id=step.session_id,
            name=step.name,
            code=step.code,
            budget_micros=step.budget_micros,
            workflow_id=activity.info().workflow_id or "",
            image=step.image,
        )
        self.on_change()
        return seq

    @activity.defn(name="execute")
    def execute(self, step: StepInput) -> StepResult:
        try:
            run = self.sandbox.run(
                step.code,
                step_id=step.step_id,
                image=step.image,
                timeout_s=step.timeout_s,
                memory_bytes=step.memory_bytes,
                cpus=step.cpus,
                pids_limit=step.pids_limit,
            )
        except SandboxError as exc:
            raise ApplicationError(str(exc), type="SandboxError", non_retryable=True) from None
        error_name, error_value = ("", "")
        if run.reason == "timeout":
            error_name, error_value = (
                "TimeoutError",
                f"cell exceeded --timeout {step.timeout_s:g} s",
            )
        elif run.reason == "oom":
            error_name, error_value = "MemoryError", "memory limit exceeded (OOM-killed)"
        elif run.reason != "ok":
            error_name, error_value = _error_from_stderr(run.stderr)
            error_name = error_name or "SandboxError"
        return StepResult(
            step_id=step.step_id,
            status="completed" if run.reason == "ok" else "failed",
            exit_code=run.exit_code,
            exit_reason=run.reason,
            stdout=run.stdout,
            stderr=run.stderr,
            error_name=error_name,
            error_value=error_value,
            traceback=run.stderr if run.reason != "ok" else "",
            sandbox_seconds=run.seconds,
            duration_s=run.seconds,
        )

    @activity.defn(name="close_step")
    def close_step(self, result: StepResult) -> None:
        self.ledger.finish_step(result)
        self.on_change()
