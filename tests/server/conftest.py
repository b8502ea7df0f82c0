"""pytest-jupyter's server fixtures (``jp_fetch``, ``jp_serverapp``, ``jp_server_config``,
...) for the tests in this folder only: imported here rather than registered as a plugin
for the whole suite, so their autouse fixtures (a fresh event loop per test, server
clean-up) and their async-test hooks touch no other test; and this folder's own fixtures:
the server with the extension loaded, on a fresh ledger."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403

from wflo_jupyter.ledger.budgets import BudgetLedger
from wflo_jupyter.ledger.store import Ledger


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"wflo_jupyter": True},
            "tornado_settings": {"wflo_heartbeat_s": 0.3},
        }
    }


@pytest.fixture
def ledger(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    monkeypatch.setenv("WFLO_DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("WFLO_TEMPORAL_UI", "http://127.0.0.1:8233")
    ledger = Ledger.connect(fresh_database_url)
    yield ledger
    ledger.close()


@pytest.fixture
def budgets(ledger: Ledger) -> Iterator[BudgetLedger]:
    budgets = BudgetLedger(ledger.engine)
    yield budgets
    budgets.close()


@pytest.fixture
def server(jp_serverapp: Any, http_server_client: Any) -> Iterator[Any]:
    """The server app with the extension loaded, serving on ``jp_http_port``; its listener
    and engine closed after."""
    yield jp_serverapp
    jp_serverapp.web_app.settings["wflo_hub"].close()
    jp_serverapp.web_app.settings["wflo_access"].close()
