"""A LiteLLM proxy callback (it runs inside LiteLLM's own environment, .venv-litellm, never
the project's): one JSON line per call the proxy answered, with the usage it reported and
the cost LiteLLM itself priced it at, appended to ``$WFLO_LITELLM_RECORD``.

The proxy's spend endpoints need its database; this is how the tests see what the
third-party server did without one. Loaded by the proxy config's
``litellm_settings.callbacks: record_calls.recorder``."""

from __future__ import annotations

import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class RecordCalls(CustomLogger):  # type: ignore[misc]
    def _write(self, kwargs: dict[str, Any], response: Any, ok: bool) -> None:
        usage = getattr(response, "usage", None)
        line = {
            "ok": ok,
            "call_type": kwargs.get("call_type"),
            "model": kwargs.get("model"),
            "stream": bool(kwargs.get("stream")),
            "id": getattr(response, "id", None),
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
            "response_cost": kwargs.get("response_cost"),
        }
        with open(os.environ["WFLO_LITELLM_RECORD"], "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._write(kwargs, response_obj, True)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._write(kwargs, response_obj, False)


recorder = RecordCalls()
