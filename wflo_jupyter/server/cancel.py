"""``StepCanceller``: the server extension's cancel of a running step, through Temporal.

The lab panel's cancel button asks the server, not the kernel: the kernel's main thread
is busy running the very cell to cancel. The server asks Temporal to cancel the step's
workflow (``wflo-step-...``, read from the ledger), exactly what the notebook's interrupt
does: the kernel's worker passes the cancel to the running step, which interrupts the
cell, cuts its LLM calls off and releases their reservations; the step ends
``cancelled`` and the change reaches the panel through the event stream.

One Temporal client per server, connected on first use on the server's own event loop
(temporalio is asyncio; tornado runs on asyncio). Temporal unreachable is one line,
``TemporalUnreachable``; the next request tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.stack.settings import Settings, temporal_address

if TYPE_CHECKING:
    from temporalio.client import Client

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


class TemporalUnreachable(Exception):
    """Temporal cannot be asked now (none configured or running, or it fails)."""


class StepCanceller:
    """Cancels steps' workflows for the handlers (one client, made on first use)."""

    def __init__(self, settings_of: Callable[[], Settings] = Settings.from_env) -> None:
        self._settings_of = settings_of
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        from temporalio.client import Client

        async with self._lock:
            if self._client is not None:
                return self._client
            try:
                settings = self._settings_of()
                address = temporal_address(settings)
            except WfloError as exc:
                raise TemporalUnreachable(str(exc)) from None
            if address is None:
                raise TemporalUnreachable("no WFLO_TEMPORAL_ADDRESS and no local stack running")
            try:
                self._client = await asyncio.wait_for(
                    Client.connect(address, namespace=settings.temporal_namespace),
                    CONNECT_TIMEOUT_S,
                )
            except Exception as exc:
                raise TemporalUnreachable(f"Temporal at {address}: {_first_line(exc)}") from None
            return self._client

    async def cancel(self, workflow_id: str) -> None:
        """Ask Temporal to cancel ``workflow_id`` (does not wait for the step to end)."""
        client = await self.client()
        try:
            await asyncio.wait_for(
                client.get_workflow_handle(workflow_id).cancel(), CONNECT_TIMEOUT_S
            )
        except Exception as exc:
            log.warning("wflo: cancelling %s failed: %s", workflow_id, _first_line(exc))
            raise TemporalUnreachable(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
