"""The live budget meter: its traits follow the ledger (NOTIFY through one feed per
kernel), from this session's money moves and from another process's, and it shows in a
real kernel, with a readable text form."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until
from tests.kernel_driver import Kernel
from wflo_jupyter.core.budget import BudgetState
from wflo_jupyter.jupyter.meter import BudgetMeter
from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.session import WfloSession, load_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.temporal,
    pytest.mark.docker,
]


@pytest.fixture
def session(stack_env: dict[str, str], runtime_image: str) -> Iterator[WfloSession]:
    made = WfloSession(load_settings(), notebook_path=f"meter-{uuid.uuid4().hex[:8]}.ipynb")
    made.start()
    yield made
    made.close()


@pytest.fixture
def other_kernel(session: WfloSession) -> Iterator[BudgetLedger]:
    """Money moved by someone else: a ledger client of its own (its own connections)."""
    assert session.ledger is not None
    from sqlalchemy import create_engine

    engine = create_engine(session.ledger.engine.url)
    other = BudgetLedger(engine)
    yield other
    other.close()
    engine.dispose()


def shown(meter: BudgetMeter, kind: str, key: str) -> dict[str, int] | None:
    for budget in meter.budgets:
        if budget["kind"] == kind and budget["key"] == key:
            return {k: budget[k] for k in ("limit_micros", "spent_micros", "reserved_micros")}
    return None


def ledger_numbers(state: BudgetState) -> dict[str, int]:
    return {
        "limit_micros": state.limit_micros,
        "spent_micros": state.spent_micros,
        "reserved_micros": state.reserved_micros,
    }


def test_traits_follow_money_moved_by_another_process(
    session: WfloSession, other_kernel: BudgetLedger
) -> None:
    session.set_notebook_budget(1_000_000)
    team = f"team-{uuid.uuid4().hex[:6]}"
    session.set_team_budget(team, 5_000_000, None)
    session.join_team(team)
    meter = BudgetMeter(session.meter_snapshot())
    meter.follow(session.subscribe_meter)
    try:
        notebook = ("notebook", session.notebook_key)
        held = other_kernel.reserve([notebook, ("team", team)], 200_000)
        for kind, key in (notebook, ("team", team)):
            wait_until(
                lambda k=kind, key_=key: (
                    (shown(meter, k, key_) or {}).get("reserved_micros") == 200_000
                ),
                10,
                what=f"the meter to show the {kind} reservation",
            )
        other_kernel.settle(held, 150_000)
        for kind, key in (notebook, ("team", team)):
            wait_until(
                lambda k=kind, key_=key: (
                    shown(meter, k, key_) == ledger_numbers(other_kernel.state(k, key_))
                ),
                10,
                what=f"the meter to equal the ledger's {kind} budget",
            )
        assert shown(meter, "notebook", session.notebook_key) == {
            "limit_micros": 1_000_000,
            "spent_micros": 150_000,
            "reserved_micros": 0,
        }
        assert "notebook budget: $0.15 spent, $0.00 reserved of $1.00" in repr(meter)
    finally:
        meter.close()


def test_one_feed_serves_every_meter_and_closes_with_the_session(
    session: WfloSession, other_kernel: BudgetLedger
) -> None:
    import threading

    session.set_notebook_budget(1_000_000)
    meters = [BudgetMeter(session.meter_snapshot()) for _ in range(5)]
    for meter in meters:
        meter.follow(session.subscribe_meter)
    feed_threads = [t for t in threading.enumerate() if t.name.startswith("wflo-meter")]
    assert len(feed_threads) == 2  # one listener + one publisher for all five meters
    other_kernel.settle(other_kernel.reserve([("notebook", session.notebook_key)], 10_000), 10_000)
    for meter in meters:
        wait_until(
            lambda m=meter: (
                (shown(m, "notebook", session.notebook_key) or {}).get("spent_micros") == 10_000
            ),
            10,
            what="every meter to update",
        )
    session.close()
    wait_until(lambda: not any(t.is_alive() for t in feed_threads), 10, what="the feed to stop")
    assert not [t for t in threading.enumerate() if t.name.startswith("wflo-meter")]


@pytest.mark.kernel
def test_meter_in_a_real_kernel(kernel: Kernel) -> None:
    assert kernel.run("%wflo budget 0.50").status == "ok"
    run = kernel.run("%wflo meter")
    assert run.status == "ok", run.error
    (data,) = run.data
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "notebook budget: $0.00 spent, $0.00 reserved of $0.50" in data["text/plain"]
    traits = kernel.run(
        "m = get_ipython().find_magic('wflo').__self__\n"
        "w = m._meters[-1]\n"
        "s = m.session.budget_states()[0]\n"
        "print(w.budgets[0]['limit_micros'] == s.limit_micros,"
        " w.budgets[0]['spent_micros'] == s.spent_micros)"
    )
    assert traits.stdout.split() == ["True", "True"]
