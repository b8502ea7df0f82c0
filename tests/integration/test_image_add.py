"""Derived images (``runtime/packages.py``) and ``wflo image list | prune`` with the real
Docker engine and the host's pip, from wheels written in the test's folder (no index):
built FROM the runtime image, labelled with their pinned set, importable as uid 1000
without network; the same request is reused at once; a package with no wheel and an
unresolvable set are one line each. One test asks PyPI (a wheel that needs numpy: the
image's own numpy is kept, not downloaded into the layer)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from tests.wheels import make_wheel
from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.inventory import built_images
from wflo_jupyter.runtime.packages import (
    ADDED_LABEL,
    DERIVED_FROM_LABEL,
    KIND_LABEL,
    PACKAGES_LABEL,
    DerivedImages,
    PackageRequest,
)
from wflo_jupyter.runtime.steps import BuildError

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def probe(client: docker.DockerClient, image: str, code: str) -> str:
    output = client.containers.run(
        image,
        ["python3", "-I", "-c", code],
        user="1000:1000",
        network_mode="none",
        read_only=True,
        remove=True,
    )
    return bytes(output).decode().strip()


def test_add_builds_labels_imports_and_reuses(
    docker_client: docker.DockerClient,
    runtime_image: str,
    tmp_path: Path,
    removed_images: list[str],
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = f"wflotiny{uuid.uuid4().hex[:8]}"
    make_wheel(wheels, name, "0.3", "forty-two")
    said: list[str] = []
    images = DerivedImages(docker_client, tmp_path / "home", said.append)
    request = PackageRequest((f"{name}==0.*",), (str(wheels),), no_index=True)

    first = images.add(runtime_image, request)
    removed_images.append(first.tag)
    assert first.built and first.tag.startswith("wflo-pkgs:")
    assert first.added == first.packages == (f"{name}==0.3",)
    labels = docker_client.images.get(first.tag).labels
    assert labels[KIND_LABEL] == "derived"
    assert labels[PACKAGES_LABEL] == f"{name}==0.3"
    assert labels[DERIVED_FROM_LABEL] == runtime_image
    assert recipe.RECIPE_LABEL in labels  # inherited: list and prune know it as wflo's
    assert any(line.startswith("resolving ") for line in said)
    assert any("docker build: done in" in line for line in said)
    out = probe(
        docker_client, first.tag, f"import {name}, numpy, os; print({name}.VALUE, os.getuid())"
    )
    assert out == "forty-two 1000"

    said.clear()
    again = DerivedImages(docker_client, tmp_path / "other-home", said.append).add(
        runtime_image, request
    )
    assert (again.tag, again.built) == (first.tag, False)
    assert again.seconds < 1.0
    assert said == [f"reusing {first.tag} ({name}==0.3)"]

    # a layer on the layer: both packages, the first one's kept
    second_name = f"{name}b"
    make_wheel(wheels, second_name, "1.0", "second", requires=(name,))
    stacked = images.add(first.tag, PackageRequest((second_name,), (str(wheels),), True))
    removed_images.append(stacked.tag)
    assert stacked.added == (f"{second_name}==1.0",)
    assert stacked.packages == tuple(sorted((f"{name}==0.3", f"{second_name}==1.0")))
    assert docker_client.images.get(stacked.tag).labels[ADDED_LABEL] == f"{second_name}==1.0"
    assert probe(docker_client, stacked.tag, f"import {second_name}, {name}; print('ok')") == "ok"

    listed = {image.name: image for image in built_images(docker_client)}
    assert listed[stacked.tag].kind == "derived"
    assert listed[stacked.tag].base == first.tag
    assert listed[runtime_image].kind == "runtime"


def test_no_wheel_conflict_and_nothing_new_are_one_line(
    docker_client: docker.DockerClient, runtime_image: str, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    images = DerivedImages(docker_client, tmp_path / "home", lambda _line: None)
    missing = f"wflonowheel{uuid.uuid4().hex[:6]}"
    with pytest.raises(BuildError) as no_wheel:
        images.add(runtime_image, PackageRequest((missing,), (str(wheels),), True))
    assert str(no_wheel.value).startswith(
        f"{missing}: no wheel for the sandbox's platform (cp311, "
    )
    assert re.search(r"glibc 2\.\d+\), or no such package on the index$", str(no_wheel.value))
    numpy = recipe.pinned(recipe.recipe_dir())["numpy"]
    make_wheel(wheels, "wflowantsoldnumpy", "1.0", "x", requires=("numpy<1",))
    with pytest.raises(BuildError) as conflict:
        images.add(runtime_image, PackageRequest(("wflowantsoldnumpy",), (str(wheels),), True))
    text = str(conflict.value)
    assert "\n" not in text
    assert text.startswith("cannot resolve the set: ")
    assert f"numpy=={numpy}" in text and "wflowantsoldnumpy" in text
    # numpy is in the runtime already: nothing to build, the image stays
    make_wheel(wheels, "numpy", numpy, "never-installed")
    same = images.add(runtime_image, PackageRequest((f"numpy=={numpy}",), (str(wheels),), True))
    assert (same.tag, same.built, same.added) == (runtime_image, False, ())


def test_list_and_prune_keep_what_a_container_uses(
    docker_client: docker.DockerClient,
    runtime_image: str,
    tmp_path: Path,
    removed_images: list[str],
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    images = DerivedImages(docker_client, tmp_path / "home", lambda _line: None)
    tags = []
    for name in (f"wflokeep{uuid.uuid4().hex[:6]}", f"wflogone{uuid.uuid4().hex[:6]}"):
        make_wheel(wheels, name, "1.0", name)
        tags.append(images.add(runtime_image, PackageRequest((name,), (str(wheels),), True)).tag)
    removed_images.extend(tags)
    keep, gone = tags
    env = {**os.environ, "WFLO_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    cli = [sys.executable, "-m", "wflo_jupyter.cli", "image"]
    listing = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, check=False)
    assert listing.returncode == 0, listing.stderr
    assert keep in listing.stdout and gone in listing.stdout and "wflokeep" in listing.stdout
    container = docker_client.containers.run(
        keep, ["sleep", "60"], detach=True, network_mode="none", remove=True
    )
    try:
        pruned = subprocess.run(
            [*cli, "prune"], env=env, capture_output=True, text=True, check=False
        )
    finally:
        container.kill()
    assert pruned.returncode == 0, pruned.stderr
    assert f"{keep}: kept: a running sandbox uses it" in pruned.stdout
    assert f"{gone}: removed" in pruned.stdout
    assert docker_client.images.get(runtime_image)  # not without --all
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(gone)


def test_a_pypi_package_with_binary_wheels_keeps_the_images_numpy(
    docker_client: docker.DockerClient,
    runtime_image: str,
    tmp_path: Path,
    removed_images: list[str],
) -> None:
    result = DerivedImages(docker_client, tmp_path / "home", lambda _line: None).add(
        runtime_image, PackageRequest(("numexpr",), (), False)
    )
    removed_images.append(result.tag)
    assert [p.split("==")[0] for p in result.added] == ["numexpr"]  # numpy: the image's
    numpy = recipe.pinned(recipe.recipe_dir())["numpy"]
    out = probe(
        docker_client,
        result.tag,
        "import numexpr, numpy; print(numpy.__version__, numexpr.evaluate('2 * 21').item())",
    )
    assert out == f"{numpy} 42"
