"""The wheel as a user installs it: built from this checkout, installed into a clean
virtualenv (its dependencies from requirements.lock, then the wheel itself), with no npm
at install time. JupyterLab there lists the lab extension enabled and OK, and
jupyter_server lists the server extension enabled and OK. The wheel carries the runtime
image's recipe: outside the checkout, the installed ``wflo image build`` finds the
suite's image current by that recipe, and ``wflo --version`` names the wheel's version."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

UV = REPO_ROOT / ".venv" / "bin" / "uv"
SHARE = "share/jupyter/labextensions/wflo-jupyter"


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(UV, "build", "--wheel", "--no-build-isolation", "-q", "-o", out, REPO_ROOT)
    [built] = out.glob("wflo_jupyter-*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("clean") / "venv"
    _run("python3", "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(
        UV,
        "pip",
        "sync",
        "-q",
        "--python",
        python,
        "--require-hashes",
        REPO_ROOT / "requirements.lock",
    )
    # no npm on the PATH: installing the wheel must not need it
    env = {**os.environ, "PATH": f"{venv / 'bin'}:/nonexistent"}
    _run(UV, "pip", "install", "-q", "--python", python, "--no-deps", wheel, env=env)
    return venv


def test_the_wheel_carries_the_built_lab_extension(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = f"wflo_jupyter-0.1.0.data/data/{SHARE}"
    assert f"{data}/package.json" in names
    assert f"{data}/install.json" in names
    assert f"{data}/static/style.js" in names
    assert any(n.startswith(f"{data}/static/remoteEntry.") for n in names)
    assert (
        "wflo_jupyter-0.1.0.data/data/etc/jupyter/jupyter_server_config.d/wflo_jupyter.json"
        in names
    )
    assert not any(n.startswith("wflo_jupyter/labextension/") for n in names)  # not twice


def test_jupyterlab_lists_the_extension_enabled_and_ok(clean_venv: Path) -> None:
    assert (clean_venv / SHARE / "static" / "style.js").is_file()
    listed = _run(clean_venv / "bin" / "jupyter", "labextension", "list")
    [line] = [li for li in listed.splitlines() if "wflo-jupyter" in li]
    assert "enabled" in line and "OK" in line and "(python, wflo-jupyter)" in line, line


def test_jupyter_server_lists_the_server_extension_enabled_and_ok(clean_venv: Path) -> None:
    listed = _run(clean_venv / "bin" / "jupyter", "server", "extension", "list")
    assert "wflo_jupyter enabled" in listed.replace("\x1b[32m", "").replace("\x1b[0m", ""), listed
    assert "wflo_jupyter 0.1.0 OK" in listed.replace("\x1b[32m", "").replace("\x1b[0m", ""), listed


def test_the_wheel_carries_the_runtime_recipe(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("Dockerfile", "requirements.txt"):
        assert f"wflo_jupyter/runtime/python3.11/{name}" in names
    assert not any("/.build/" in n for n in names)


def test_the_wheel_carries_the_event_schemas(wheel: Path, clean_venv: Path) -> None:
    """Every event schema is package data: in the wheel, and loaded from the installed
    package (``importlib.resources``), where it validates an envelope."""
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO_ROOT / "wflo_jupyter/events/schemas").glob("*.json"))
    assert len(shipped) >= 7
    assert all(f"wflo_jupyter/events/schemas/{n}" in names for n in shipped)
    script = (
        "from wflo_jupyter.events.schemas import EventSchemas, EventSchemaError\n"
        "s = EventSchemas(); print(len(s.types()))\n"
        "try: s.validate({'type': 'step.started', 'payload': {}})\n"
        "except EventSchemaError as e: print(e)\n"
    )
    out = _run(clean_venv / "bin" / "python", "-I", "-c", script, env={"PATH": "/usr/bin:/bin"})
    assert out.splitlines() == [
        str(len(shipped)),
        "step.started v1 at envelope: 'id' is a required property",
    ]


def test_the_installed_cli_builds_from_its_own_recipe(
    clean_venv: Path, runtime_image: str, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WFLO_")},
        "PATH": f"{clean_venv / 'bin'}:/usr/bin:/bin",
        "WFLO_HOME": str(tmp_path / "home"),
    }
    wflo = str(clean_venv / "bin" / "wflo")
    version = subprocess.run(
        [wflo, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert version.stdout.strip() == "wflo-jupyter 0.1.0", version.stderr
    built = subprocess.run(
        [wflo, "image", "build", "--tag", runtime_image],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"{runtime_image}: up to date"), built.stdout
