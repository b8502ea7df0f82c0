"""The example notebooks run end to end in a real kernel, checked by nbval."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kernel,
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.postgres,
]


def test_quickstart_runs_under_nbval(stack_env: dict[str, str], runtime_image: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--rootdir",
            str(REPO_ROOT / "notebooks"),
            "-q",
            str(REPO_ROOT / "notebooks" / "quickstart.ipynb"),
        ],
        env={**os.environ, **stack_env, "WFLO_PROVIDER": "mock"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO_ROOT / "notebooks",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    assert "failed" not in result.stdout
