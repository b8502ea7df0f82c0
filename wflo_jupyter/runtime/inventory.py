"""``wflo image list`` and ``wflo image prune``: the images wflo built on this Docker engine.

wflo's images are known by their labels: a runtime image carries ``org.wflo.recipe-hash``
(``wflo image build``), a derived one also ``org.wflo.kind=derived`` (``%wflo image add``;
it inherits its base's labels). Prune removes derived images no container uses, the newest
first (a layer before the layer it was built FROM); ``--all`` the runtime images too.
Nothing is forced: an image a container (or another image) still needs stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import docker
import requests
from docker.errors import DockerException

from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.packages import DERIVED_FROM_LABEL, KIND_LABEL, PACKAGES_LABEL


@dataclass(frozen=True)
class BuiltImage:
    """One image wflo built."""

    id: str
    tags: tuple[str, ...]
    kind: str  # "runtime" | "derived"
    base: str
    packages: tuple[str, ...]
    size_bytes: int
    created: datetime

    @property
    def name(self) -> str:
        return self.tags[0] if self.tags else self.id.removeprefix("sha256:")[:12]


def built_images(client: docker.DockerClient) -> list[BuiltImage]:
    """wflo's images on this engine, runtime images first, then newest first."""
    found: list[BuiltImage] = []
    for image in client.images.list(filters={"label": recipe.RECIPE_LABEL}):
        labels = image.labels or {}
        derived = labels.get(KIND_LABEL) == "derived"
        attrs = image.attrs
        created = datetime.fromisoformat(str(attrs.get("Created", "1970-01-01T00:00:00Z"))[:19])
        found.append(
            BuiltImage(
                id=str(image.id),
                tags=tuple(sorted(image.tags)),
                kind="derived" if derived else "runtime",
                base=labels.get(DERIVED_FROM_LABEL if derived else recipe.BASE_LABEL, ""),
                packages=tuple(labels.get(PACKAGES_LABEL, "").split()) if derived else (),
                size_bytes=int(attrs.get("Size", 0)),
                created=created,
            )
        )
    found.sort(key=lambda i: i.created, reverse=True)
    found.sort(key=lambda i: i.kind != "runtime")
    return found


def images_in_use(client: docker.DockerClient) -> set[str]:
    """Ids of the images a running container uses."""
    return {str(c.image.id) for c in client.containers.list() if c.image is not None}


def prune(client: docker.DockerClient, *, include_runtime: bool) -> list[tuple[BuiltImage, str]]:
    """Remove what no running container uses; (image, "removed" or why it stayed)."""
    used = images_in_use(client)
    images = built_images(client)
    order = [i for i in images if i.kind == "derived"]
    if include_runtime:
        order += [i for i in images if i.kind == "runtime"]
    outcome: list[tuple[BuiltImage, str]] = []
    for image in order:
        if image.id in used:
            outcome.append((image, "kept: a running sandbox uses it"))
            continue
        try:
            for tag in image.tags or (image.id,):
                client.images.remove(tag, noprune=False)
            outcome.append((image, "removed"))
        except (DockerException, requests.RequestException) as exc:
            reason = str(getattr(exc, "explanation", "") or exc).splitlines()[0][:120]
            outcome.append((image, f"kept: {reason}"))
    return outcome


__all__ = ["BuiltImage", "built_images", "images_in_use", "prune"]
