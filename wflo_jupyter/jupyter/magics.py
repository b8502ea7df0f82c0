"""``%%wflo`` and ``%wflo ...``: parse the options, call the session, display the result.

Defaults are traitlets, so ``%config WfloMagics.timeout = 120`` works.
"""

from __future__ import annotations

import math
import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display as ipython_display
from traitlets import Bool, Dict, Float, Int, TraitError, Unicode, validate

from wflo_jupyter.core.commands import magic_help, parse_line_command
from wflo_jupyter.core.errors import (
    ConfigError,
    SpecError,
    StepCancelled,
    StepFailed,
    UnsafeOutput,
)
from wflo_jupyter.core.money import usd_to_micros
from wflo_jupyter.core.steps import StepDefaults, parse_step_spec
from wflo_jupyter.jupyter import display
from wflo_jupyter.session import WfloSession, load_settings


@magics_class
class WfloMagics(Magics):
    """The wflo magics; one instance (and one ``WfloSession``) per kernel."""

    budget = Unicode(None, allow_none=True, help="Default cell budget in USD.").tag(config=True)
    timeout = Float(60.0, help="Default cell timeout in seconds.").tag(config=True)
    memory = Unicode("512m", help="Default sandbox memory limit.").tag(config=True)
    cpus = Float(1.0, help="Default sandbox CPUs.").tag(config=True)
    pids_limit = Int(128, help="Sandbox process limit.").tag(config=True)
    image = Unicode("", help="Sandbox image (default: WFLO_RUNTIME_IMAGE).").tag(config=True)
    retries = Int(
        0,
        help="Default --retries: infrastructure failures (a sandbox that would not start, "
        "a lost worker) retried with backoff; a cell's own error never is.",
    ).tag(config=True)
    task_queue = Unicode(
        "",
        help="Default --queue: the task queue of a `wflo worker` (on another machine) that "
        "runs this notebook's steps; empty: this kernel runs them.",
    ).tag(config=True)
    prices = Dict(
        help="Price overrides in USD per million tokens: "
        "{'my-model': {'input': 0.15, 'output': 0.60, 'cache_read': 0.075}}; "
        "'max_output_tokens' sets a model's output limit (alone: the limit only)."
    ).tag(config=True)
    compute_price = Float(
        0.0, help="USD per second of sandbox time, charged to the step's budgets."
    ).tag(config=True)
    idle_timeout = Float(
        1800.0, help="Seconds of inactivity after which the sandbox container is stopped."
    ).tag(config=True)
    show_meter = Bool(
        True,
        help="Show a compact live budget meter under a %%wflo cell that made LLM calls.",
    ).tag(config=True)
    confirm_above = Float(
        None,
        allow_none=True,
        help="USD: an LLM call whose worst case is above this waits for your yes in the "
        "running cell before anything is reserved or sent (None: never ask). A run without "
        "stdin (nbclient, wflo demo) refuses such calls.",
    ).tag(config=True)

    @validate("compute_price", "timeout", "cpus", "confirm_above")
    def _positive(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not math.isfinite(value):
            raise TraitError(f"WfloMagics.{proposal['trait'].name} must be finite, got {value}")
        zero_ok = proposal["trait"].name in ("compute_price", "confirm_above")
        if value is not None and (value < 0 or (not zero_ok and value == 0)):
            raise TraitError(f"WfloMagics.{proposal['trait'].name} must be positive, got {value}")
        return value

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._session: WfloSession | None = None
        self._meters: list[Any] = []  # %wflo meter widgets, closed with the session
        self._compact_meter: Any = None  # the newest cell's compact meter

    @property
    def session(self) -> WfloSession:
        if self._session is None:
            try:
                settings = load_settings()
            except ConfigError as exc:
                raise UsageError(str(exc)) from None
            self._session = WfloSession(
                settings,
                notebook_path=os.environ.get("WFLO_NOTEBOOK_PATH")
                or os.environ.get("JPY_SESSION_NAME"),
                progress=display.notice,
                idle_timeout_s=self.idle_timeout,
            )
        return self._session

    @staticmethod
    def _runtime_image() -> str:
        try:
            return load_settings().runtime_image
        except ConfigError as exc:
            raise UsageError(str(exc)) from None

    def defaults(self) -> StepDefaults:
        return StepDefaults(
            budget_usd=self.budget,
            timeout_s=self.timeout,
            memory=self.memory,
            cpus=self.cpus,
            pids_limit=self.pids_limit,
            image=self.image or self._runtime_image(),
            retries=self.retries,
            queue=self.task_queue,
        )

    @line_cell_magic
    def wflo(self, line: str, cell: str | None = None) -> Any:
        if cell is None:
            return self._line(line)
        try:
            spec = parse_step_spec(line, cell, self.defaults())
        except SpecError as exc:
            raise UsageError(str(exc)) from None
        namespace = self.shell.user_ns if self.shell is not None else {}
        missing = [name for name in spec.inputs if name not in namespace]
        if missing:
            raise UsageError(f"--in: no variable named {missing[0]!r} in the notebook")
        inputs = {name: namespace[name] for name in spec.inputs}
        session = self.session
        session.compute_price_micros = usd_to_micros(str(self.compute_price))
        above = self.confirm_above
        session.confirm_above_micros = None if above is None else usd_to_micros(str(above))
        try:
            session.set_price_overrides(dict(self.prices))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        count = getattr(self.shell, "execution_count", None)
        result, io = session.run_step(
            spec,
            inputs,
            on_event=display.show_event,
            ask=display.ask,
            execution_count=count if isinstance(count, int) else None,
        )
        if io.estimate is not None:
            display.show_estimate(io.estimate.lines(spec.budget_micros, failed=not result.ok))
        display.show_result(result)
        if io.llm_requests and io.estimate is None and self.show_meter:
            self._show_meter(session, compact=True)
        namespace.update(io.values)
        if result.cancelled:
            raise StepCancelled(result.error_value)
        if not result.ok:
            raise StepFailed(display.failure_line(result), result.traceback)
        if io.value_errors:
            raise UnsafeOutput("; ".join(io.value_errors.values()))
        return None

    wflo.__doc__ = magic_help()  # what %wflo? and %%wflo? show

    def prewarm(self) -> None:
        """Start the sandbox container in the background (no-op on a bad setting: the
        first cell reports it)."""
        try:
            image = self.defaults().image
            self.session.prewarm(image)
        except UsageError:
            pass

    def _line(self, line: str) -> Any:
        try:
            command = parse_line_command(line)
        except SpecError as exc:
            raise UsageError(str(exc)) from None
        if command.name == "help":
            print(magic_help())
            return None
        session = self.session
        if command.name == "runs":
            steps = session.steps()[-command.options["limit"] :]
            return display.steps_table(steps, *session.temporal_ui())
        if command.name == "events":
            events = session.events(command.options["limit"], command.options["all_sessions"])
            endpoints = session.endpoints  # set by session.events (it starts the session)
            kafka = endpoints is not None and endpoints.kafka_bootstrap is not None
            return display.events_table(events, kafka=kafka)
        if command.name == "budget":
            return self._budget(session, command.options)
        if command.name == "team":
            state = session.join_team(command.options["name"])
            display.notice(f"this notebook's steps are also charged to team {state.scope.key}")
            return display.budget_states([state])
        if command.name == "report":
            from wflo_jupyter.jupyter import report

            frame = report.report_frame(session.report_rows(command.options["all_sessions"]))
            report.cost_chart(frame)
            return frame
        if command.name == "cache":
            return self._cache(session, command.options)
        if command.name == "meter":
            return self._show_meter(session, compact=False)
        if command.name == "doctor":
            return display.doctor(session.doctor(command.options["timeout"]))
        if command.name == "restart":
            session.restart_sandbox()
            display.notice("new sandbox session: state from earlier cells was dropped")
            return None
        return display.status(session.status_rows())

    @staticmethod
    def _budget(session: WfloSession, options: dict[str, Any]) -> Any:
        team, limit = options["team"], options["limit_micros"]
        if team is None and limit is None:
            return display.budget_states(session.budget_states())
        if team is None:
            return display.budget_states([session.set_notebook_budget(limit)])
        if limit is None:
            return display.budget_states([session.team_state(team)])
        return display.budget_states([session.set_team_budget(team, limit, options["period"])])

    @staticmethod
    def _cache(session: WfloSession, options: dict[str, Any]) -> Any:
        try:
            if options["action"] == "stats":
                return display.cache_stats(session.cache_report())
            said = session.clear_cache(model=options["model"], this_notebook=options["notebook"])
        except ConfigError as exc:  # no Redis configured
            raise UsageError(f"%wflo cache: {exc}") from None
        display.notice(said)
        return None

    def _show_meter(self, session: WfloSession, *, compact: bool) -> Any:
        """A live ``BudgetMeter``: ``%wflo meter`` returns a full one; a cell that made
        LLM calls shows a compact one, and only the newest compact one follows the feed
        (earlier ones keep their cell's last numbers)."""
        from wflo_jupyter.jupyter.meter import BudgetMeter

        widget = BudgetMeter(session.meter_snapshot(), compact=compact)
        widget.follow(session.subscribe_meter)
        if compact:
            if self._compact_meter is not None:
                self._compact_meter.stop_following()
            self._compact_meter = widget
            ipython_display(widget)
            return None
        self._meters.append(widget)
        return widget

    def close(self) -> None:
        for widget in [*self._meters, *([self._compact_meter] if self._compact_meter else [])]:
            widget.close()
        self._meters, self._compact_meter = [], None
        if self._session is not None:
            self._session.close()
            self._session = None
