"""``%wflo image`` from a real kernel: ``add`` builds a derived image from local wheels
(``--find-links``, ``--no-index``: no index asked), the session switches to it and says
its state was dropped, the set is recorded in the cell output's metadata, and another
kernel asking for the same set reuses the image within a second; bad requests are one
line. A missing runtime image is built by the first cell, or named with its command when
``WfloMagics.auto_build_image`` is off (a tag of its own: the suite's image is untouched)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.kernel_driver import Kernel
from tests.marks import KERNEL
from tests.wheels import make_wheel
from wflo_jupyter.runtime import recipe

pytestmark = KERNEL


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    return folder


def test_add_switches_records_and_is_reused(
    make_kernel: Callable[..., Kernel], wheels: Path, removed_images: list[str]
) -> None:
    name = f"wflonb{uuid.uuid4().hex[:8]}"
    make_wheel(wheels, name, "2.1", "from-a-local-wheel")
    kernel = make_kernel()
    assert kernel.run("%%wflo\nkept = 1").status == "ok"
    shown = kernel.run("%wflo image")
    assert "added packages: none" in shown.notices

    add = kernel.run(f"%wflo image add --no-index --find-links {wheels} {name}")
    assert add.status == "ok", (add.reply, add.stderr)
    switched = [d for d in add.metadata if "wflo" in d]
    assert len(switched) == 1
    recorded = switched[0]["wflo"]
    assert recorded["packages"] == [f"{name}==2.1"] and recorded["requested"] == [name]
    tag = recorded["image"]
    removed_images.append(tag)
    assert tag.startswith("wflo-pkgs:")
    assert "state from earlier cells was dropped" in add.notices
    assert f"sandbox image {tag} (built in" in add.notices

    after = kernel.run(f"%%wflo\nimport {name}\nprint({name}.VALUE, 'kept' in globals())")
    assert after.stdout == "from-a-local-wheel False\n", after.error_line
    assert f"sandbox image {tag}; added packages: {name}==2.1" in kernel.run("%wflo image").notices

    other = make_kernel()
    started = time.monotonic()
    reuse = other.run(f"%wflo image add --no-index --find-links {wheels} {name}")
    took = time.monotonic() - started  # a new kernel's whole cell: its session starts too
    assert took < 3.0, (took, reuse.notices)
    reused = re.search(rf"sandbox image {tag} \(reused in ([0-9.]+) s\)", reuse.notices)
    assert reused is not None and float(reused[1]) < 1.0, reuse.notices
    assert other.run(f"%%wflo\nimport {name}\nprint({name}.VALUE)").stdout == (
        "from-a-local-wheel\n"
    )


def test_bad_requests_are_one_line(
    make_kernel: Callable[..., Kernel], wheels: Path, tmp_path: Path
) -> None:
    kernel = make_kernel()
    missing = f"wflonope{uuid.uuid4().hex[:6]}"
    nope = kernel.run(f"%wflo image add --no-index --find-links {wheels} {missing}")
    assert nope.status == "error"
    assert nope.stderr.startswith(f"UsageError: {missing}: no wheel for the sandbox's platform")
    assert nope.stderr.count("\n") == 1
    empty = kernel.run("%wflo image add")
    assert empty.stderr == (
        "UsageError: %wflo image add: name at least one package, or -r requirements.txt\n"
    )
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# ours\n--index-url https://example.invalid/simple\n")
    option = kernel.run(f"%wflo image add -r {requirements}")
    assert option.stderr == (
        f"UsageError: -r {requirements}: only requirement lines are supported, not "
        "'--index-url https://example.invalid/simple'\n"
    )
    assert kernel.run("%%wflo\nprint('still the runtime')").stdout == "still the runtime\n"


def test_requirements_file(
    make_kernel: Callable[..., Kernel], wheels: Path, tmp_path: Path, removed_images: list[str]
) -> None:
    names = [f"wflorq{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        make_wheel(wheels, name, "1.0", name)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{names[0]}==1.0  # pinned\n\n{names[1]}\n")
    kernel = make_kernel()
    add = kernel.run(f"%wflo image add --no-index --find-links {wheels} -r {requirements}")
    assert add.status == "ok", add.error_line
    removed_images.append(next(d["wflo"]["image"] for d in add.metadata if "wflo" in d))
    run = kernel.run(f"%%wflo\nimport {names[0]}, {names[1]}\nprint({names[1]}.VALUE)")
    assert run.stdout == f"{names[1]}\n"


def test_missing_runtime_image_is_built_or_named(
    make_kernel: Callable[..., Kernel],
    docker_client: docker.DockerClient,
    runtime_image: str,
    removed_images: list[str],
) -> None:
    tag = f"wflo-test-autobuild:{uuid.uuid4().hex[:8]}"
    removed_images.append(tag)
    base = docker_client.images.get(runtime_image).labels[recipe.BASE_LABEL]
    kernel = make_kernel({"WFLO_RUNTIME_IMAGE": tag, "WFLO_RUNTIME_BASE": base})
    kernel.run("%config WfloMagics.auto_build_image = False")
    off = kernel.run("%%wflo\nprint('hi')")
    assert off.status == "error"
    assert off.stderr == (
        f"UsageError: sandbox image '{tag}' not found; build it with `wflo image build --tag "
        f"{tag}` (or %config WfloMagics.auto_build_image = True)\n"
    )
    kernel.run("%config WfloMagics.auto_build_image = True")
    on = kernel.run("%%wflo\nprint('hi')", timeout=600)
    assert on.stdout == "hi\n", on.error_line
    assert f"sandbox image {tag} not found: building it" in on.notices
    assert "docker build: done in" in on.notices
    assert docker_client.images.get(tag).labels[recipe.BASE_LABEL] == base
