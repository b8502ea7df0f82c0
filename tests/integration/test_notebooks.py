"""The example notebooks run end to end in a real kernel: nbval compares every output
with the one saved in the notebook (ids, per-run names, times and shared-cache counts
sanitised by tests/fixtures/nbval-sanitize.cfg), and `wflo demo` runs each. They are package
data (wflo_jupyter/examples): the wheel ships them, `wflo examples DIR` copies them out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.marks import KERNEL

pytestmark = KERNEL

NOTEBOOKS = ["quickstart", "budgets", "cache", "sandbox-safety", "team"]
HERE = REPO_ROOT / "wflo_jupyter" / "examples"
SANITIZE = REPO_ROOT / "tests" / "fixtures" / "nbval-sanitize.cfg"


def test_the_examples_pass_nbval_with_their_saved_outputs(
    stack_env: dict[str, str], runtime_image: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-sanitize-with",
            str(SANITIZE),
            "--rootdir",
            str(HERE),
            "-q",
            *[str(HERE / f"{name}.ipynb") for name in NOTEBOOKS],
        ],
        env={**os.environ, **stack_env, "WFLO_PROVIDER": "mock"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        cwd=HERE,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert "failed" not in result.stdout


@pytest.mark.parametrize("name", [*NOTEBOOKS[1:], "team-partner"])
def test_wflo_demo_runs_each_example(
    stack_env: dict[str, str], runtime_image: str, name: str
) -> None:
    """(The quickstart's, with no argument from an installed wheel: test_wheel_install.)"""
    result = subprocess.run(
        [sys.executable, "-m", "wflo_jupyter.cli", "demo", str(HERE / f"{name}.ipynb")],
        env={**os.environ, **stack_env, "WFLO_PROVIDER": "mock"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "notebook done in" in result.stdout + result.stderr
