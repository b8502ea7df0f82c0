"""The gateway's answer to an LLM call made while the ledger is unreachable.

The call cannot be budgeted, so it is not sent. The cell's SDK gets HTTP 503 with
``Retry-After`` (and ``x-should-retry``), in the provider's own error format, naming the
ledger: the official ``openai`` and ``anthropic`` SDKs retry it by themselves, so a short
outage only delays the call. (A 400 would tell them the request was wrong: no retry.)
"""

from __future__ import annotations

import json

from wflo_jupyter.gateway.upstream import error_body

LEDGER_DOWN_STATUS = 503
LEDGER_RETRY_AFTER_S = 5  # what the SDKs wait before their next attempt
LEDGER_DOWN_MESSAGE = (
    "LedgerUnavailable: the wflo ledger (PostgreSQL) is unreachable, so this call cannot be "
    "budgeted and was not sent; retry once it is back (`wflo up` starts it)"
)


def ledger_down_reply(provider: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the answer to a call refused for the ledger's outage."""
    body = error_body(provider, LEDGER_DOWN_STATUS, LEDGER_DOWN_MESSAGE, code="ledger_unavailable")
    headers = {
        "content-type": "application/json",
        "retry-after": str(LEDGER_RETRY_AFTER_S),
        "x-should-retry": "true",
    }
    return LEDGER_DOWN_STATUS, headers, json.dumps(body).encode()
