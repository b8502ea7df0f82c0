"""``wflo image build`` with the real Docker engine: a new tag is built from the recipe in
the package (wheels on the host, ``docker build`` offline), labelled with the recipe
hash the doctor checks, runs the promised packages as uid 1000 without network, and a
second build is a no-op; a base that is neither present nor pullable is one line.

The build uses a tag of its own (never the suite's runtime image, which other tests
use) and a WFLO_HOME of its own; the image is removed afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.base import build_local_base

pytestmark = [pytest.mark.integration, pytest.mark.docker]

WFLO = [sys.executable, "-m", "wflo_jupyter.cli"]


def wflo(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WFLO, *args],
        env={**os.environ, "WFLO_HOME": str(home), "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture
def scratch_tag(docker_client: docker.DockerClient, runtime_image: str) -> Iterator[str]:
    tag = f"wflo-test-runtime:{uuid.uuid4().hex[:10]}"
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(tag)


def test_build_label_run_and_rebuild(
    docker_client: docker.DockerClient, runtime_image: str, scratch_tag: str, tmp_path: Path
) -> None:
    base = docker_client.images.get(runtime_image).labels[recipe.BASE_LABEL]
    first = wflo("image", "build", "--tag", scratch_tag, "--base", base, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{scratch_tag}: built (base {base}, recipe ")
    progress = first.stderr
    assert "python packages" in progress and "docker build: Step " in progress
    assert "docker build: done in" in progress

    image = docker_client.images.get(scratch_tag)
    base_id = docker_client.images.get(base).id
    expected = recipe.current_hash(recipe.recipe_dir(), base, base_id)
    assert image.labels[recipe.RECIPE_LABEL] == expected
    assert image.labels[recipe.BASE_LABEL] == base
    # the same recipe on the same base: the suite's image (built by the old script or by
    # this command) carries the same hash
    assert docker_client.images.get(runtime_image).labels[recipe.RECIPE_LABEL] == expected
    assert (tmp_path / "runtime" / "python3.11" / ".build" / "site.key").is_file()

    probe = (
        "import importlib.metadata as m, json, os; "
        "import numpy, pandas, pyarrow, matplotlib, openai, anthropic; "
        "print(json.dumps({'uid': os.getuid(), "
        "'versions': {p: m.version(p) for p in ('openai', 'anthropic', 'numpy')}}))"
    )
    output = docker_client.containers.run(
        scratch_tag,
        ["python3", "-I", "-c", probe],
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "size=64m", "/workspace": "size=64m,uid=1000,gid=1000"},
        cap_drop=["ALL"],
        remove=True,
    )
    seen = json.loads(bytes(output).decode())
    pins = recipe.pinned(recipe.recipe_dir())
    assert seen["uid"] == 1000
    assert seen["versions"] == {p: pins[p] for p in ("openai", "anthropic", "numpy")}

    again = wflo("image", "build", "--tag", scratch_tag, home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{scratch_tag}: up to date (base {base}, ")
    assert "docker build" not in again.stderr and "downloading" not in again.stderr
    assert docker_client.images.get(scratch_tag).id == image.id

    doctor = wflo("doctor", "--json", home=tmp_path, WFLO_RUNTIME_IMAGE=scratch_tag)
    row = next(r for r in json.loads(doctor.stdout)["checks"] if r["check"] == "runtime image")
    assert (row["level"], row["state"]) == ("ok", "current")
    assert scratch_tag in row["found"]


def test_a_base_that_cannot_be_had_is_one_line(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    tag = f"wflo-test-runtime:{uuid.uuid4().hex[:10]}"
    missing = f"wflo-test-no-such-base:{uuid.uuid4().hex[:8]}"
    done = wflo("image", "build", "--tag", tag, "--base", missing, home=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: base image {missing} is not present and cannot be pulled"
    )
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


def test_a_base_from_a_debian_mirror(docker_client: docker.DockerClient) -> None:
    """The registry-free base (what a machine without a registry gets): debootstrap,
    trimmed, imported; Debian's Python 3.11 runs in it. Built under a name of its own, so
    the suite's base and runtime image are untouched."""
    name = f"wflo-test-base:{uuid.uuid4().hex[:10]}"
    said: list[str] = []
    try:
        build_local_base(docker_client, said.append, name=name)
        image = docker_client.images.get(name)
        assert image.labels["org.wflo.base"] == "debootstrap-bookworm-minbase"
        output = docker_client.containers.run(
            name,
            ["python3", "-c", "import sys; print(sys.version_info[:2])"],
            network_mode="none",
            remove=True,
        )
        assert bytes(output).decode().strip() == "(3, 11)"
        # what the image holds (Docker puts its own /etc/hostname and resolv.conf in any
        # container, so those two are not seen this way)
        created = docker_client.containers.create(name, ["true"], network_mode="none")
        try:
            apt_lists = _listing(created, "/var/lib/apt/lists")
            archives = _listing(created, "/var/cache/apt/archives")
        finally:
            created.remove()
        assert not [n for n in archives if n.endswith(".deb")]
        assert apt_lists == []  # trimmed
        assert said[0].startswith(f"building base image {name} from Debian mirror ")
        assert said[-1] == f"base image {name} ready"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(name)


def _listing(container: Any, path: str) -> list[str]:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return [m.name for m in tar.getmembers() if "/" in m.name]
