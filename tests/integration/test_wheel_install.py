"""The wheel and the sdist as a user gets them: built from this checkout (``uv build``, no
build isolation: nothing outside the lock), their metadata checked as ``twine check`` would
(twine is not in the lock: ``packaging`` validates the core metadata, ``markdown-it-py``
renders the README that is the long description), and the wheel installed into a clean
virtualenv (its dependencies from requirements.lock, then the wheel itself), with no npm
at install time. JupyterLab there lists the lab extension enabled and OK, and
jupyter_server lists the server extension enabled and OK. The wheel carries the runtime
image's recipe and the example notebooks: outside the checkout, the installed ``wflo image
build`` finds the suite's image current by that recipe, ``wflo examples DIR`` copies the
notebooks out of the installed package, and ``wflo --version`` names the wheel's version."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from packaging.metadata import Metadata

from tests.conftest import REPO_ROOT

UV = REPO_ROOT / ".venv" / "bin" / "uv"
SHARE = "share/jupyter/labextensions/wflo-jupyter"
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
EXAMPLES = sorted(p.name for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the sdist, built from the checkout."""
    out = tmp_path_factory.mktemp("dist")
    _run(UV, "build", "--sdist", "--wheel", "--no-build-isolation", "-q", "-o", out, REPO_ROOT)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    [built] = dist.glob("wflo_jupyter-*.whl")
    return built


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    [built] = dist.glob("wflo_jupyter-*.tar.gz")
    return built


def _outside(venv: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: the clean venv's commands first, no ``WFLO_*``
    from the suite and no ``PYTHON*`` (nothing of the checkout on the path), a home of its
    own."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "PYTHON"))},
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "WFLO_HOME": str(tmp_path / "home"),
    }


def _wflo(
    venv: Path, *args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed ``wflo``, run as a user would: from ``cwd``, in :func:`_outside`."""
    return subprocess.run(
        [str(venv / "bin" / "wflo"), *args],
        capture_output=True,
        text=True,
        env={**_outside(venv, cwd), **(extra_env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _installed_python(venv: Path, script: str) -> list[str]:
    """The lines ``script`` prints in the clean venv's interpreter, isolated (``-I``: no
    checkout on its path)."""
    return _run(
        venv / "bin" / "python", "-I", "-c", script, env={"PATH": "/usr/bin:/bin"}
    ).splitlines()


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
    data = f"wflo_jupyter-{VERSION}.data/data/{SHARE}"
    assert f"{data}/package.json" in names
    assert f"{data}/install.json" in names
    assert f"{data}/static/style.js" in names
    assert any(n.startswith(f"{data}/static/remoteEntry.") for n in names)
    assert (
        f"wflo_jupyter-{VERSION}.data/data/etc/jupyter/jupyter_server_config.d/wflo_jupyter.json"
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
    assert f"wflo_jupyter {VERSION} OK" in listed.replace("\x1b[32m", "").replace("\x1b[0m", ""), (
        listed
    )


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
    types = {name.rsplit(".v", 1)[0] for name in shipped}  # <type>.v<N>.json
    assert _installed_python(clean_venv, script) == [
        str(len(types)),
        "step.started v1 at envelope: 'id' is a required property",
    ]


def test_the_installed_cli_builds_from_its_own_recipe(
    clean_venv: Path, runtime_image: str, tmp_path: Path
) -> None:
    version = _wflo(clean_venv, "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"wflo-jupyter {VERSION}", version.stderr
    built = _wflo(clean_venv, "image", "build", "--tag", runtime_image, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"{runtime_image}: up to date"), built.stdout


def _check_metadata(raw: str) -> None:
    """What ``twine check`` checks, with what the lock holds: the core metadata parses and
    validates (``packaging.metadata`` raises on a malformed field or an unknown metadata
    version), carries the fields PyPI shows, as pyproject.toml declares them, and its long
    description is the README, which renders as Markdown: its title, every table, every
    code block."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    metadata = Metadata.from_email(raw, validate=True)
    assert (metadata.name, str(metadata.version)) == (project["name"], VERSION)
    assert metadata.summary == project["description"]
    assert metadata.license_expression == project["license"]
    assert str(metadata.requires_python) == project["requires-python"]
    assert metadata.description_content_type == "text/markdown"
    readme = (REPO_ROOT / project["readme"]).read_text()
    assert metadata.description is not None
    assert metadata.description.strip() == readme.strip()
    tokens = MarkdownIt("commonmark").enable("table").parse(metadata.description)
    assert (tokens[0].type, tokens[1].content) == ("heading_open", "wflo-jupyter")
    tables = [t for t in tokens if t.type == "table_open"]
    assert len(tables) == len(re.findall(r"^\|[ :]*-{3,}", readme, re.MULTILINE)) > 0
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == len(re.findall(r"^\s*```", readme, re.MULTILINE)) // 2 > 0


def _git_files(*paths: str) -> list[str]:
    listed = _run("git", "-C", REPO_ROOT, "ls-files", "--", *paths)
    return [name for name in listed.splitlines() if (REPO_ROOT / name).exists()]


def test_the_wheel_and_the_sdist_pass_the_metadata_checks(wheel: Path, sdist: Path) -> None:
    with zipfile.ZipFile(wheel) as built:
        _check_metadata(built.read(f"wflo_jupyter-{VERSION}.dist-info/METADATA").decode())
    with tarfile.open(sdist) as built:
        pkg_info = built.extractfile(f"wflo_jupyter-{VERSION}/PKG-INFO")
        assert pkg_info is not None
        _check_metadata(pkg_info.read().decode())


def test_the_wheel_holds_the_package_its_examples_and_nothing_else(wheel: Path) -> None:
    assert len(EXAMPLES) == 6  # named in tests/unit/test_examples_cli.py
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
        entry_points = built.read(f"wflo_jupyter-{VERSION}.dist-info/entry_points.txt").decode()
    package = [n for n in _git_files("wflo_jupyter") if not n.startswith("wflo_jupyter/labext")]
    assert len(package) > 100
    assert [n for n in package if n not in names] == []
    assert "wflo_jupyter/py.typed" in names
    assert {f"wflo_jupyter/examples/{n}" for n in EXAMPLES} <= names
    assert {n.split("/")[0] for n in names} == {
        "wflo_jupyter",
        f"wflo_jupyter-{VERSION}.dist-info",
        f"wflo_jupyter-{VERSION}.data",
    }
    assert [n for n in names if "__pycache__" in n or "/.build/" in n] == []
    assert "wflo = wflo_jupyter.cli:main" in entry_points


def test_the_sdist_holds_every_tracked_file(sdist: Path) -> None:
    """Everything under version control that the sdist does not exclude on purpose."""
    with tarfile.open(sdist) as built:
        names = {n.split("/", 1)[1] for n in built.getnames() if "/" in n}
    tracked = _git_files()
    assert {"pyproject.toml", "README.md", "PKG-INFO", "labextension/src/index.ts"} <= names
    assert {f"notebooks/{n}" for n in EXAMPLES} <= names
    assert [n for n in tracked if n not in names] == []


def test_the_installed_package_finds_its_examples_in_the_venv(clean_venv: Path) -> None:
    script = (
        "import wflo_jupyter\n"
        "from wflo_jupyter.cli.examples import example_notebooks\n"
        "print(wflo_jupyter.__version__)\n"
        "for notebook in example_notebooks(): print(notebook)\n"
    )
    version, *paths = _installed_python(clean_venv, script)
    assert version == VERSION
    assert [Path(p).name for p in paths] == EXAMPLES
    assert all(Path(p).is_relative_to(clean_venv) for p in paths), paths


def test_the_installed_cli_copies_the_examples_out(clean_venv: Path, tmp_path: Path) -> None:
    """``wflo examples DIR`` writes one line per notebook; a second run refuses, one line per
    file, and changes nothing; ``--force`` replaces them. ``wflo demo --help`` names the
    packaged quickstart."""

    def wflo(*args: str) -> subprocess.CompletedProcess[str]:
        return _wflo(clean_venv, *args, cwd=tmp_path, extra_env={"COLUMNS": "200"})

    copied = wflo("examples", "nb")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.splitlines() == [f"wrote nb/{n}" for n in EXAMPLES]
    for name in EXAMPLES:
        shipped = (REPO_ROOT / "notebooks" / name).read_bytes()
        assert (tmp_path / "nb" / name).read_bytes() == shipped
    (tmp_path / "nb" / "quickstart.ipynb").write_text("mine")
    refused = wflo("examples", "nb")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [
        f"error: nb/{n} exists (--force overwrites it)" for n in EXAMPLES
    ]
    assert (tmp_path / "nb" / "quickstart.ipynb").read_text() == "mine"
    forced = wflo("examples", "nb", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines() == [f"replaced nb/{n}" for n in EXAMPLES]
    assert (tmp_path / "nb" / "quickstart.ipynb").read_text().startswith("{")

    helped = wflo("demo", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Notebook to run (default: the packaged quickstart)." in helped.stdout


@pytest.mark.docker
@pytest.mark.kernel
def test_the_installed_wflo_up_and_demo_run_the_packaged_quickstart(
    clean_venv: Path, runtime_image: str, tmp_path: Path
) -> None:
    """As a pip user's first hour, from the clean venv outside the checkout, with no
    ``WFLO_*`` engine settings: ``wflo up`` starts the local stack from the installed
    package, and ``wflo demo`` with no argument runs the quickstart the wheel installed,
    headless (its kernel on Unix sockets: no plain-TCP warning; stopped at the end), then
    prints the step table with the simulated calls and their saving."""
    mock = {"WFLO_PROVIDER": "mock"}
    up = _wflo(clean_venv, "up", cwd=tmp_path, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        run = _wflo(clean_venv, "demo", cwd=tmp_path, extra_env=mock, timeout=600)
    finally:
        down = _wflo(clean_venv, "down", cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert run.returncode == 0, run.stderr[-3000:]
    ran = "".join(run.stderr.split())  # the progress line, however the console wrapped it
    assert f"running{clean_venv}/lib/" in ran and "/wflo_jupyter/examples/quickstart.ipynb" in ran
    assert "without encryption" not in run.stdout + run.stderr
    assert "Parent appears to have exited" not in run.stdout + run.stderr  # kernel stopped
    assert "summarise" in run.stdout and "(simulated)" in run.stdout
    assert "5 steps" in run.stdout
