"""The kernel's sandbox images: ``%wflo image`` (which image, which added packages),
``%wflo image add`` (a derived image, ``runtime/packages.py``) and the first cell's check
that its image exists (built from the package's recipe when it is the runtime image and
auto-build is on; otherwise one line with the exact command to run).

Progress lines go to the session's ``progress`` (the running cell's notices).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wflo_jupyter.core.errors import WfloError

if TYPE_CHECKING:
    from wflo_jupyter.runtime.packages import DerivedImage
    from wflo_jupyter.session.sandboxes import KernelSandboxes
    from wflo_jupyter.stack.settings import Settings


class ImageUnavailable(WfloError):
    """The sandbox image is missing, or could not be built (one line)."""


def requirement_lines(path: str) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines skipped;
    pip options are refused: the packages come from the index or --find-links)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageUnavailable(f"-r {path}: cannot read it ({exc.strerror})") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for line in lines:
        if line.startswith("-"):
            raise ImageUnavailable(f"-r {path}: only requirement lines are supported, not {line!r}")
    found = [line for line in lines if line]
    if not found:
        raise ImageUnavailable(f"-r {path}: no requirement in it")
    return found


class SessionImages:
    """Image questions and builds for one kernel's sandboxes (Docker isolation only)."""

    def __init__(
        self, settings: Settings, sandboxes: KernelSandboxes, progress: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.progress = progress
        self._present: set[str] = set()

    def _docker_only(self, what: str) -> None:
        isolation = self.sandboxes.isolation()
        if isolation != "docker":
            raise ImageUnavailable(
                f"{what} needs the Docker engine (this kernel's sandboxes use {isolation})"
            )

    def describe(self, image: str) -> tuple[str, tuple[str, ...]]:
        """(``image``, the packages wflo added to it) for ``%wflo image``."""
        from docker.errors import ImageNotFound

        from wflo_jupyter.runtime.packages import image_packages

        self._docker_only("%wflo image")
        try:
            return image, image_packages(self.sandboxes.docker_client(), image)
        except ImageNotFound:
            raise ImageUnavailable(f"sandbox image {image!r} is not built yet") from None

    def add(
        self,
        base: str,
        specs: list[str],
        *,
        requirements: str | None = None,
        find_links: list[str] | None = None,
        no_index: bool = False,
        auto_build: bool = True,
    ) -> DerivedImage:
        """``base`` plus these packages (found or built); the caller switches to its tag.
        ``auto_build``: a missing runtime ``base`` is built first (see ``ensure``)."""
        from wflo_jupyter.runtime.packages import DerivedImages, PackageRequest

        self._docker_only("%wflo image add")
        wanted = [*specs, *(requirement_lines(requirements) if requirements else [])]
        for folder in find_links or []:
            if not Path(folder).expanduser().is_dir():
                raise ImageUnavailable(f"--find-links {folder}: no such folder")
        request = PackageRequest(
            tuple(wanted),
            tuple(str(Path(f).expanduser().resolve()) for f in find_links or []),
            no_index,
        )
        self.ensure(base, auto_build=auto_build)
        builder = DerivedImages(self.sandboxes.docker_client(), self.settings.home, self.progress)
        return builder.add(base, request)

    def ensure(self, image: str, *, auto_build: bool) -> None:
        """Nothing when ``image`` exists (or the sandbox is not Docker); the runtime image
        is built when ``auto_build``; else ``ImageUnavailable`` naming the command."""
        from wflo_jupyter.runtime import recipe
        from wflo_jupyter.runtime.base import image_id

        if image in self._present or self.sandboxes.isolation() != "docker":
            return
        client = self.sandboxes.docker_client()
        if image_id(client, image) is not None:
            self._present.add(image)
            return
        command = recipe.BUILD_COMMAND + ("" if image == recipe.DEFAULT_TAG else f" --tag {image}")
        if image != self.settings.runtime_image:
            derived = image.startswith("wflo-pkgs:")
            hint = "run %wflo image add again" if derived else "docker image ls"
            raise ImageUnavailable(f"sandbox image {image!r} not found ({hint})")
        if not auto_build:
            raise ImageUnavailable(
                f"sandbox image {image!r} not found; build it with `{command}` "
                "(or %config WfloMagics.auto_build_image = True)"
            )
        from wflo_jupyter.runtime.build import ImageBuilder

        self.progress(f"sandbox image {image} not found: building it (`{command}`)...")
        base = os.environ.get("WFLO_RUNTIME_BASE") or None
        ImageBuilder(client, self.settings.home, self.progress).build(image, base)
        self._present.add(image)


__all__ = ["ImageUnavailable", "SessionImages", "requirement_lines"]
