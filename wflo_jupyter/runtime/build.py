"""``wflo image build``: the runtime image from the package's recipe, idempotent by the
recipe hash (label ``org.wflo.recipe-hash``; the base in ``org.wflo.runtime-base``).

Up to date (the label matches the recipe on the same base): nothing is downloaded or
built. Otherwise, one builder at a time (a lock file), the base is chosen (``base.py``),
the wheels installed on the host (``site.py``), and ``docker build --network none`` runs
on a context in ``WFLO_HOME/runtime/python3.11`` (the recipe's files and ``.build/site``).
The tag moves only when the build succeeded; the superseded image is removed when no
container uses it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.errors import DockerException, ImageNotFound

from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.base import choose_base, image_id
from wflo_jupyter.runtime.site import prepare_site
from wflo_jupyter.runtime.steps import BuildError, Progress, build_lock, docker_build


@dataclass(frozen=True)
class BuildResult:
    tag: str
    base: str
    recipe_hash: str
    built: bool  # False: it was up to date
    seconds: float


@dataclass(frozen=True)
class _Current:
    id: str | None
    recipe_hash: str | None
    base: str | None


class ImageBuilder:
    """Builds the runtime image with a Docker client; ``home`` keeps the build's context
    and the wheels' tree between builds."""

    def __init__(self, client: docker.DockerClient, home: Path, progress: Progress) -> None:
        self.client = client
        self.context = home / "runtime" / recipe.RUNTIME
        self.progress = progress

    def build(self, tag: str = recipe.DEFAULT_TAG, base: str | None = None) -> BuildResult:
        """Build ``tag`` on ``base`` (default: see ``base.choose_base``) unless current."""
        started = time.monotonic()
        source = recipe.recipe_dir()
        if not (source / "Dockerfile").is_file():
            raise BuildError(f"the runtime recipe is missing from this installation ({source})")
        fast = self._up_to_date(tag, base, source)
        if fast is not None:
            return BuildResult(tag, fast[0], fast[1], False, time.monotonic() - started)
        with build_lock(self.progress):
            current = self._current(tag)  # another builder may have finished meanwhile
            chosen = choose_base(self.client, base, current.base, self.progress)
            chosen_id = image_id(self.client, chosen)
            assert chosen_id is not None
            digest = recipe.current_hash(source, chosen, chosen_id)
            if current.id is not None and current.recipe_hash == digest:
                self.progress(f"runtime image up to date ({tag}, base {chosen})")
                return BuildResult(tag, chosen, digest, False, time.monotonic() - started)
            self._stage(source)
            prepare_site(
                self.client,
                chosen,
                source / "requirements.txt",
                self.context / ".build",
                self.progress,
            )
            docker_build(
                self.client,
                self.context,
                tag,
                {"BASE": chosen},
                {recipe.RECIPE_LABEL: digest, recipe.BASE_LABEL: chosen},
                self.progress,
            )
            new_id = image_id(self.client, tag)
            if current.id is not None and current.id != new_id:
                with contextlib.suppress(DockerException, requests.RequestException):
                    self.client.images.remove(current.id)  # superseded, unless a container uses it
        self.progress(f"runtime image {tag} ready (base {chosen}, recipe {digest[:12]})")
        return BuildResult(tag, chosen, digest, True, time.monotonic() - started)

    def _current(self, tag: str) -> _Current:
        try:
            image = self.client.images.get(tag)
        except ImageNotFound:
            return _Current(None, None, None)
        labels = image.labels or {}
        return _Current(
            str(image.id), labels.get(recipe.RECIPE_LABEL), labels.get(recipe.BASE_LABEL)
        )

    def _up_to_date(self, tag: str, base: str | None, source: Path) -> tuple[str, str] | None:
        """(base, hash) when ``tag`` is current on the base it would be built on now."""
        current = self._current(tag)
        wanted = base or current.base
        if current.id is None or not wanted:
            return None
        wanted_id = image_id(self.client, wanted)
        if wanted_id is None:
            return None
        digest = recipe.current_hash(source, wanted, wanted_id)
        if current.recipe_hash != digest:
            return None
        self.progress(f"runtime image up to date ({tag}, base {wanted})")
        return wanted, digest

    def _stage(self, source: Path) -> None:
        """The build context: the recipe's files beside the kept ``.build/``."""
        self.context.mkdir(parents=True, exist_ok=True)
        for entry in self.context.iterdir():
            if entry.name == ".build":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for relative, _digest in recipe.recipe_files(source):
            target = self.context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target)


__all__ = ["BuildResult", "ImageBuilder"]
