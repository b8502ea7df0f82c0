"""The server extension's REST and event-stream handlers, under ``/wflo/api/``.

- ``GET budgets?path=P``: the notebook's budgets (its notebook budget and the team
  budgets its steps were charged to);
- ``GET steps?path=P&limit=N``: its steps, newest first;
- ``GET events?path=P``: a live stream of what changed (``text/event-stream``);
- ``POST steps/cancel?path=P&step=ID``: cancel the notebook's running step (through
  Temporal, as the notebook's interrupt does): 202 when asked, 404 for a step the
  notebook did not run, 409 when it is not running, 503 when Temporal is unreachable.

Every handler is a jupyter_server ``APIHandler`` that requires the server's
authentication (``@tornado.web.authenticated``: no token, a 403) and authorization
(``@authorized`` on resource ``wflo``: action ``read`` for GET, ``write`` for POST).
Ledger reads run on the default executor, never on the server's event loop. Errors are
one line of JSON, ``{"message": ...}``: 400 for a malformed argument, 503
``wflo: ledger unreachable`` when the ledger cannot be read (the server itself keeps
working).

Why server-sent events rather than a WebSocket: the stream only flows from the server to
the browser (the browser's requests are the REST calls), SSE is plain HTTP through the
same handler chain (token, authorization, base URL, proxies) and can be read with
``fetch`` and ``ServerConnection.makeRequest``'s headers as well as ``EventSource`` with
the login cookie, and a comment line every ``HEARTBEAT_S`` keeps proxies from closing
an idle stream and lets the server notice a client that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from sqlalchemy import Engine
from tornado import web
from tornado.iostream import StreamClosedError

from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.ledger.notebooks import (
    NotebookStep,
    notebook_budgets,
    notebook_step_run,
    notebook_steps,
    notebook_teams,
)
from wflo_jupyter.server.access import LedgerAccess, LedgerUnreachable
from wflo_jupyter.server.cancel import StepCanceller, TemporalUnreachable
from wflo_jupyter.server.hub import UNREACHABLE, ChangeHub, Subscription
from wflo_jupyter.server.paths import (
    BadRequest,
    check_limit,
    check_notebook_path,
    check_step_id,
    ledger_keys,
)
from wflo_jupyter.server.payloads import budget_json, step_json

T = TypeVar("T")
HEARTBEAT_S = 15.0
AUTH_RESOURCE = "wflo"


class WfloHandler(APIHandler):
    """What the three handlers share: the ledger, the hub, argument checks, replies."""

    auth_resource = AUTH_RESOURCE

    @property
    def access(self) -> LedgerAccess:
        access: LedgerAccess = self.settings["wflo_access"]
        return access

    @property
    def hub(self) -> ChangeHub:
        hub: ChangeHub = self.settings["wflo_hub"]
        return hub

    def notebook_keys(self) -> tuple[str, ...]:
        """The ledger keys of the ``path`` argument (``BadRequest`` when malformed)."""
        path = check_notebook_path(self.raw_argument("path"))
        roots = [
            getattr(self.contents_manager, "root_dir", None),
            self.settings.get("server_root_dir"),
        ]
        return ledger_keys(path, [r for r in roots if isinstance(r, str)])

    def raw_argument(self, name: str) -> str | None:
        """The last ``name`` query argument exactly as sent (tornado's ``get_argument``
        silently drops control characters and strips spaces: a path with a NUL would
        pass), or ``None``; ``BadRequest`` when it is not UTF-8."""
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"wflo: the {name} argument is not UTF-8") from None

    async def read(self, query: Callable[[Engine], T], empty: T) -> T:
        """``query`` on the ledger, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.access.read, query, empty)

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))

    def refuse(self, exc: Exception) -> None:
        """A 400 for a malformed argument, a 503 when the ledger is unreachable."""
        if isinstance(exc, BadRequest):
            self.reply(400, {"message": str(exc)})
        else:
            self.reply(503, {"message": UNREACHABLE})


class BudgetsHandler(WfloHandler):
    """``GET /wflo/api/budgets?path=P``."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            keys = self.notebook_keys()
            no_budgets: list[BudgetState] = []
            states = await self.read(lambda e: notebook_budgets(e, keys), no_budgets)
        except (BadRequest, LedgerUnreachable) as exc:
            self.refuse(exc)
            return
        self.hub.learn_teams(keys, [s.scope.key for s in states if s.scope.kind == "team"])
        self.reply(200, {"path": keys[0], "budgets": [budget_json(s) for s in states]})


class StepsHandler(WfloHandler):
    """``GET /wflo/api/steps?path=P&limit=N``."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            keys = self.notebook_keys()
            limit = check_limit(self.raw_argument("limit"))
            no_steps: list[NotebookStep] = []
            steps = await self.read(lambda e: notebook_steps(e, keys, limit), no_steps)
        except (BadRequest, LedgerUnreachable) as exc:
            self.refuse(exc)
            return
        ui, namespace = self.access.temporal_ui()
        self.reply(200, {"path": keys[0], "steps": [step_json(s, ui, namespace) for s in steps]})


class CancelStepHandler(WfloHandler):
    """``POST /wflo/api/steps/cancel?path=P&step=ID``."""

    @property
    def canceller(self) -> StepCanceller:
        canceller: StepCanceller = self.settings["wflo_canceller"]
        return canceller

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            keys = self.notebook_keys()
            step_id = check_step_id(self.raw_argument("step"))
            run = await self.read(lambda e: notebook_step_run(e, keys, step_id), None)
        except (BadRequest, LedgerUnreachable) as exc:
            self.refuse(exc)
            return
        if run is None:
            self.reply(404, {"message": f"wflo: this notebook ran no step {step_id}"})
            return
        status, workflow_id = run
        if status != "running" or not workflow_id:
            self.reply(409, {"message": f"wflo: step {step_id} is not running ({status})"})
            return
        try:
            await self.canceller.cancel(workflow_id)
        except TemporalUnreachable as exc:
            self.reply(503, {"message": f"wflo: Temporal unreachable: {exc}"})
            return
        self.reply(202, {"step_id": step_id, "workflow_id": workflow_id, "cancel": "requested"})


class EventsHandler(WfloHandler):
    """``GET /wflo/api/events?path=P``: ``event: <type>`` / ``data: <json>`` messages
    (types: see ``server.hub``), a ``: heartbeat`` comment every ``HEARTBEAT_S``."""

    _sub: Subscription | None = None

    @web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            keys = self.notebook_keys()
            no_teams: set[str] = set()
            teams = await self.read(lambda e: notebook_teams(e, keys), no_teams)
        except (BadRequest, LedgerUnreachable) as exc:
            self.refuse(exc)
            return
        heartbeat = float(self.settings.get("wflo_heartbeat_s", HEARTBEAT_S))
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        sub = self._sub = self.hub.subscribe(keys, teams, asyncio.get_running_loop())
        try:
            self.write("retry: 2000\n\n: wflo events\n\n")
            await self.flush()
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat)
                except TimeoutError:
                    self.write(": heartbeat\n\n")
                else:
                    if event is None:  # the hub closed, or the client went away
                        break
                    self.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            self.hub.unsubscribe(sub)
        with contextlib.suppress(StreamClosedError):  # the client is gone already
            self.finish()

    def on_connection_close(self) -> None:
        """The client went away: end the stream now, not at the next heartbeat."""
        if self._sub is not None:
            self._sub.push(None)
        super().on_connection_close()
