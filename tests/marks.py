"""The marker sets shared by test modules (``pytestmark = KERNEL`` and so on)."""

from __future__ import annotations

import pytest

KERNEL = [
    pytest.mark.integration,
    pytest.mark.kernel,
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.postgres,
]
"""A real kernel running %%wflo cells: Docker, Temporal and PostgreSQL behind it."""

LLM_KERNEL = [*KERNEL, pytest.mark.redis]
"""A real kernel whose cells call models: the Redis cache too."""
