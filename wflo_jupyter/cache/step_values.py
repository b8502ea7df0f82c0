"""``StepValues``: a ``--queue`` step's ``--in`` and ``--out`` values, by reference, in
Redis (``wflo:step-values:{step_id}:in`` / ``:out``, JSON, expiring after a day).

They never travel in the workflow's history (Temporal's payload limit, and they are
not a record). The kernel puts the encoded inputs (``encode_inputs``: pickled, for the
sandbox to unpickle) before it starts the step. The worker reads them (each attempt),
hands them to its sandbox as they are, and puts back the sandbox's ``--out`` payloads as
they came (safe formats only, still encoded). The kernel decodes those with the host's
one rule: nothing from a sandbox is ever unpickled, here or on the worker. The kernel
drops both when the step is over.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import redis

from wflo_jupyter.core.errors import WfloError

DEFAULT_LIMIT_BYTES = 256 * 1024 * 1024
TTL_S = 24 * 3600


class StepValuesError(WfloError):
    """Values that cannot travel to or from a worker (one line)."""


def _key(step_id: str, direction: str) -> str:
    return f"wflo:step-values:{step_id}:{direction}"


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


class StepValues:
    """Put and take a step's encoded values; ``limit_bytes`` per direction."""

    def __init__(self, client: redis.Redis, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.client = client
        self.limit_bytes = limit_bytes

    def _put(self, step_id: str, direction: str, what: str, values: Mapping[str, Any]) -> None:
        blob = json.dumps(values, separators=(",", ":")).encode()
        if len(blob) > self.limit_bytes:
            sizes = sorted(((len(json.dumps(v)), name) for name, v in values.items()), reverse=True)
            largest = f"{sizes[0][1]} ({_mib(sizes[0][0])})" if sizes else "-"
            raise StepValuesError(
                f"{what}: {_mib(len(blob))} is over the {_mib(self.limit_bytes)} a worker's "
                f"values may take; the largest is {largest}"
            )
        try:
            self.client.set(_key(step_id, direction), blob, ex=TTL_S)
        except redis.RedisError as exc:
            raise StepValuesError(f"{what}: Redis refused them ({exc})") from None

    def _take(self, step_id: str, direction: str, what: str) -> dict[str, Any]:
        try:
            blob = self.client.get(_key(step_id, direction))
        except redis.RedisError as exc:
            raise StepValuesError(f"{what}: Redis did not answer ({exc})") from None
        if blob is None:
            raise StepValuesError(f"{what}: not in Redis (expired, or Redis was restarted)")
        try:
            values = json.loads(blob)
        except ValueError as exc:
            raise StepValuesError(f"{what}: not readable ({exc})") from None
        if not isinstance(values, dict):
            raise StepValuesError(f"{what}: not readable (not a mapping)")
        return values

    def forget(self, step_id: str) -> None:
        """The step is over: drop both directions (else they expire after a day)."""
        with contextlib.suppress(redis.RedisError):  # else they expire
            self.client.delete(_key(step_id, "in"), _key(step_id, "out"))

    def put_inputs(self, step_id: str, encoded: Mapping[str, Mapping[str, str]]) -> None:
        self._put(step_id, "in", "--in values for the worker", encoded)

    def take_inputs(self, step_id: str) -> dict[str, dict[str, str]]:
        values = self._take(step_id, "in", "--in values from the kernel")
        return {
            str(name): {str(k): str(v) for k, v in dict(payload).items()}
            for name, payload in values.items()
        }

    def put_outputs(self, step_id: str, payloads: Mapping[str, Any]) -> None:
        self._put(step_id, "out", "--out values for the kernel", payloads)

    def take_outputs(self, step_id: str) -> dict[str, Any]:
        return self._take(step_id, "out", "--out values from the worker")
