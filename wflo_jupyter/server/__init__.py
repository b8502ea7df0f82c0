"""The Jupyter server extension: the ledger's view of a notebook for the lab extension.

Loaded by jupyter_server through ``wflo_jupyter._jupyter_server_extension_points`` (the
package's config file ``etc/jupyter/jupyter_server_config.d/wflo_jupyter.json`` enables
it), it adds ``/wflo/api/{budgets,steps,events}`` and ``steps/cancel`` (``server.handlers``) on one
``LedgerAccess`` (``server.access``) and one ``ChangeHub`` (``server.hub``, the single
ledger listener behind every event stream). It reads the ledger only: no engine is
started, no schema migrated, and it imports neither the kernel session nor the notebook
layer.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join

from wflo_jupyter.server.access import LedgerAccess
from wflo_jupyter.server.cancel import StepCanceller
from wflo_jupyter.server.handlers import (
    BudgetsHandler,
    CancelStepHandler,
    EventsHandler,
    StepsHandler,
)
from wflo_jupyter.server.hub import ChangeHub

API_PREFIX = ("wflo", "api")


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the handlers on ``serverapp``'s web application."""
    web_app = serverapp.web_app
    access = LedgerAccess()
    hub = ChangeHub(access)
    web_app.settings["wflo_access"] = access
    web_app.settings["wflo_hub"] = hub
    web_app.settings["wflo_canceller"] = StepCanceller()
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, *API_PREFIX, "budgets"), BudgetsHandler),
            (url_path_join(base_url, *API_PREFIX, "steps"), StepsHandler),
            (url_path_join(base_url, *API_PREFIX, "steps", "cancel"), CancelStepHandler),
            (url_path_join(base_url, *API_PREFIX, "events"), EventsHandler),
        ],
    )
    serverapp.log.info("wflo: server extension loaded at %s", url_path_join(base_url, *API_PREFIX))
