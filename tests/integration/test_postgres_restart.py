"""PostgreSQL restarted in the middle of a notebook: the step in flight completes or ends
with a clear error, nothing recorded is lost, the next cell works without a kernel
restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.event_audit import EVENT_AUDIT
from tests.helpers import wait_until
from tests.kernel_driver import Kernel
from wflo_jupyter.ledger.store import Ledger, with_database
from wflo_jupyter.stack.local import LocalStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.kernel,
    pytest.mark.docker,
    pytest.mark.temporal,
]


def test_postgres_restart_mid_notebook(
    make_kernel: Callable[..., Kernel], tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    private = LocalStack(tmp_path / "pg")
    url = with_database(private.up(only=["postgres"])["postgres"].url, "wflo")
    kernel = make_kernel({"WFLO_DATABASE_URL": url})
    before = kernel.run("%%wflo --name before-restart\nprint('before')")
    assert before.stdout == "before\n", before.error
    session_id = kernel.wflo_session_id()

    in_flight = kernel.submit("%%wflo --name in-flight\nimport time\ntime.sleep(3)\nprint('done')")
    ledger = Ledger.connect(url, migrate=False)
    try:  # the restart comes once the step is recorded: it is in flight
        wait_until(
            lambda: "in-flight" in {s.name for s in ledger.steps(session_id)},
            60,
            interval=0.05,
            what="the in-flight step to be recorded",
        )
    finally:
        ledger.close()
    private.down()
    private.up(only=["postgres"])
    flight = kernel.collect(in_flight, timeout=300)
    if flight.status == "ok":
        assert flight.stdout == "done\n"
    else:  # a clear, one-line error
        assert flight.error is not None
        assert "\n" not in flight.error["evalue"]

    after = kernel.run("%%wflo --name after-restart\nprint('after')", timeout=300)
    assert after.stdout == "after\n", after.error
    assert kernel.alive()
    kernel.close()
    ledger = Ledger.connect(url)
    try:
        names = {s.name: s.status for s in ledger.steps(session_id)}
    finally:
        ledger.close()
        pytestconfig.stash[EVENT_AUDIT].check_database(url)  # its events, too
        private.down()
    assert names["before-restart"] == "completed"  # nothing already recorded was lost
    assert names["after-restart"] == "completed"
