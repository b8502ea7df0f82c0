"""``RemoteStep``: the kernel's side of a step that a ``wflo worker`` runs (``--queue``).

Before the step starts it subscribes to the step's live output (``StepOutputChannel``)
and puts the cell's ``--in`` values, encoded here, in Redis (``StepValues``). After the
result it waits briefly for trailing output, takes the ``--out`` payloads the worker put
back and decodes them with the host's one rule (safe formats only, never unpickled), and
drops what is left in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wflo_jupyter.cache.step_output import StepOutputChannel
from wflo_jupyter.cache.step_values import StepValues, StepValuesError
from wflo_jupyter.core.steps import StepInput, StepResult
from wflo_jupyter.orchestration.stepio import StepIO
from wflo_jupyter.sandbox.values import decode_outputs, encode_inputs

if TYPE_CHECKING:
    import redis

OUTPUT_SETTLE_S = 2.0  # at most this long for a worker's output after its result


class RemoteStep:
    """Output and values of one worker's step; ``close`` always (``finally``)."""

    def __init__(
        self, client: redis.Redis, step: StepInput, io: StepIO, inputs: Mapping[str, Any]
    ) -> None:
        self.step = step
        self.io = io
        self.values = StepValues(client)
        if step.inputs_by_reference:  # ValueTransferError / StepValuesError: one line
            self.values.put_inputs(step.step_id, encode_inputs(inputs))
        self._output = StepOutputChannel(client).subscribe(step.step_id, self._deliver)

    def _deliver(self, event: tuple[Any, ...]) -> None:
        kind, first, second = event
        if kind == "stream":
            self.io.stream(str(first), str(second))
        elif kind == "display":
            self.io.display(dict(first), dict(second or {}))
        elif kind == "notice":
            self.io.notice(str(first))

    def settle(self) -> None:
        """The result is in: let the worker's last output arrive (up to 2 s)."""
        self._output.close(settle_s=OUTPUT_SETTLE_S)

    def finish(self, result: StepResult) -> None:
        """Bring the ``--out`` values back into ``io`` (errors per name, one line each)."""
        names = self.step.output_names
        if not names:
            return
        try:
            payloads = self.values.take_outputs(self.step.step_id)
        except StepValuesError as exc:
            if result.ok:
                self.io.value_errors.update({name: str(exc) for name in names})
            return
        values, errors = decode_outputs(payloads)
        self.io.values.update(values)
        self.io.value_errors.update(errors)

    def close(self) -> None:
        self._output.close()
        self.values.forget(self.step.step_id)
