"""The packaged example notebooks from the source tree: ``example_notebooks`` finds the six,
each a valid notebook; ``wflo examples`` and ``wflo demo`` answer bad paths with one line.
(Copying them out of an installed wheel: tests/integration/test_wheel_install.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from wflo_jupyter.cli.examples import example_notebooks, packaged_quickstart


def _wflo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    return subprocess.run(
        [sys.executable, "-m", "wflo_jupyter.cli", *args],
        env={**env, "WFLO_HOME": str(cwd / "home")},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_package_holds_six_valid_example_notebooks() -> None:
    notebooks = example_notebooks()
    assert [nb.name for nb in notebooks] == [
        "budgets.ipynb",
        "cache.ipynb",
        "quickstart.ipynb",
        "sandbox-safety.ipynb",
        "team-partner.ipynb",
        "team.ipynb",
    ]
    for notebook in notebooks:
        parsed = nbformat.reads(notebook.read_text(), as_version=4)
        nbformat.validate(parsed)
        assert parsed.cells[0].cell_type == "markdown", notebook.name
    with packaged_quickstart() as quickstart:
        assert quickstart.is_file() and quickstart.parent.name == "examples"


def test_examples_into_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    run = _wflo("examples", "taken", cwd=tmp_path)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.splitlines() == ["error: taken exists and is not a folder"]


def test_demo_of_a_missing_notebook_or_a_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder.ipynb").mkdir()
    for name in ("missing.ipynb", "folder.ipynb"):
        run = _wflo("demo", name, cwd=tmp_path)
        assert (run.returncode, run.stdout) == (2, ""), run.stderr
        assert run.stderr.splitlines() == [f"error: no notebook at {name}"]
