"""``SessionQueries``: what the notebook asks of its session, answered with ``core``
value types: budgets (set, show, join a team), the live meter (one ``MeterFeed`` per
kernel and its snapshots), cache statistics and clears, and cost reports. A cache clear
and a team join are events too (``cache.cleared``, ``team.joined``: ``SessionEvents``).

A base class of ``WfloSession``: it reads the engines the session connected
(``start()``, ``budgets``, ``cache``, ``ledger``) and its identity (``session_id``,
``notebook_key``, ``teams``, the running or last step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from wflo_jupyter.core.budget import BudgetNotFound, BudgetState
from wflo_jupyter.core.errors import ConfigError, WfloError
from wflo_jupyter.core.events import CACHE_CLEARED, TEAM_JOINED
from wflo_jupyter.core.reports import CacheReport, MeterSnapshot, StepCostRow
from wflo_jupyter.session.events import SessionEvents
from wflo_jupyter.session.meter_feed import MeterFeed, Subscriber

if TYPE_CHECKING:
    from wflo_jupyter.cache.llm_cache import LlmCache
    from wflo_jupyter.ledger.budgets import BudgetLedger
    from wflo_jupyter.ledger.store import Ledger

METER_CALLS = 5
"""How many of the latest calls the meter lists."""


class SessionQueries:
    """The notebook's questions; ``WfloSession`` supplies the engines and identity."""

    session_id: str
    teams: list[str]
    budgets: BudgetLedger | None
    cache: LlmCache | None
    ledger: Ledger | None
    session_events: SessionEvents
    meter_step: tuple[str, str] | None = None
    """(step id, name) of the running step, else the last one: the meter's cell."""
    _meter_feed: MeterFeed | None = None

    @property
    def notebook_key(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def _budgets(self) -> BudgetLedger:
        self.start()
        assert self.budgets is not None
        return self.budgets

    def budget_states(self) -> list[BudgetState]:
        """The notebook's budget and every team budget this session is charged to."""
        budgets = self._budgets()
        return [budgets.state("notebook", self.notebook_key)] + [
            budgets.state("team", team) for team in self.teams
        ]

    def set_notebook_budget(self, limit_micros: int) -> BudgetState:
        return self._budgets().set_budget("notebook", self.notebook_key, limit_micros)

    def set_team_budget(self, team: str, limit_micros: int, period: str | None) -> BudgetState:
        budgets = self._budgets()
        if period is None:
            try:
                period = budgets.state("team", team).period
            except BudgetNotFound:
                period = "none"
        return budgets.set_budget("team", team, limit_micros, period)

    def team_state(self, team: str) -> BudgetState:
        try:
            return self._budgets().state("team", team)
        except BudgetNotFound:
            raise WfloError(
                f"no team budget {team!r}; create it with %wflo budget --team {team} USD"
            ) from None

    def join_team(self, team: str) -> BudgetState:
        """Also charge this notebook's steps to ``team`` (its budget must exist)."""
        state = self.team_state(team)
        if team not in self.teams:
            self.teams.append(team)
            self.session_events.emit(TEAM_JOINED, {"team": team, "notebook": self.notebook_key})
        return state

    def watch_notebook_budget(self, timeout_s: float = 5.0) -> Iterator[BudgetState]:
        """The notebook budget each time money moves on it (Postgres NOTIFY, from any
        kernel); ends after ``timeout_s`` without a change, so callers can look around."""
        yield from self._budgets().watch(
            "notebook", self.notebook_key, timeout=timeout_s, initial=False
        )

    def _cache(self) -> LlmCache:
        self.start()
        if self.cache is None:
            raise ConfigError("the LLM cache is off (no Redis configured)")
        return self.cache

    def cache_report(self) -> CacheReport:
        """Cache counts (every kernel's), whether Redis answers, and this kernel's hits
        answered from memory."""
        cache = self._cache()
        served = cache.near.served if cache.near is not None else None
        return CacheReport(cache.stats(), cache.available, served)

    def clear_cache(self, *, model: str | None = None, this_notebook: bool = False) -> str:
        """Remove cached answers: this notebook's, one model's, or all. Says what went."""
        cache = self._cache()
        if this_notebook:
            removed = cache.invalidate_origin(self.notebook_key)
            what, scope = f"stored by {self.notebook_key} ", "notebook"
        elif model:
            removed, what, scope = cache.invalidate_model(model), f"of {model} ", "model"
        else:
            removed, what, scope = cache.invalidate_all(), "", "all"
        self.session_events.emit(
            CACHE_CLEARED,
            {
                "scope": scope,
                "model": model if scope == "model" else None,
                "notebook": self.notebook_key if scope == "notebook" else None,
                "removed": removed,
            },
        )
        return f"removed {removed} cached answer(s) {what}from the LLM cache"

    def report_rows(self, all_sessions: bool = False) -> list[StepCostRow]:
        from wflo_jupyter.ledger.reports import step_costs

        self.start()
        assert self.ledger is not None
        return step_costs(
            self.ledger.engine, session_ids=None if all_sessions else [self.session_id]
        )

    # -- the live meter ----------------------------------------------------------------
    def meter_snapshot(self) -> MeterSnapshot:
        """Every enclosing budget, the running (or last) cell's cost and savings, and the
        latest calls, as the ledger has them now."""
        from wflo_jupyter.ledger.reports import recent_calls, step_costs

        states = self.budget_states()
        assert self.ledger is not None
        step = self.meter_step
        cost = saved = 0
        if step is not None:
            with contextlib.suppress(BudgetNotFound):  # a cell without --budget has none
                states.insert(0, self._budgets().state("cell", step[0]))
            rows = step_costs(self.ledger.engine, step_ids=[step[0]])
            if rows:
                cost, saved = rows[0].cost_micros, rows[0].saved_micros
        return MeterSnapshot(
            budgets=tuple(states),
            cell_name=step[1] if step is not None else None,
            cell_cost_micros=cost,
            cell_saved_micros=saved,
            calls=tuple(recent_calls(self.ledger.engine, self.session_id, METER_CALLS)),
        )

    def _meter_relevant(self, state: BudgetState) -> bool:
        scope = state.scope
        if scope.kind == "notebook":
            return scope.key == self.notebook_key
        if scope.kind == "team":
            return scope.key in self.teams
        step = self.meter_step
        return step is not None and scope.key == step[0]

    def subscribe_meter(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with a fresh ``MeterSnapshot`` whenever money moves on a
        budget of this notebook (from any kernel); returns the unsubscribe. One feed per
        kernel serves every subscriber."""
        budgets = self._budgets()
        if self._meter_feed is None:
            self._meter_feed = MeterFeed(
                lambda on_state, stop: budgets.follow(on_state, stop),
                self.meter_snapshot,
                self._meter_relevant,
            )
        return self._meter_feed.subscribe(subscriber)

    def refresh_meters(self) -> None:
        """Publish a fresh snapshot to the meters (after a step: cache hits move no
        budget, so no notification announced them)."""
        if self._meter_feed is not None:
            self._meter_feed.refresh()

    def close_meters(self) -> None:
        if self._meter_feed is not None:
            self._meter_feed.close()
