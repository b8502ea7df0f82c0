"""``%wflo image add``: a derived sandbox image, FROM a sandbox image, with the analyst's own
packages; the sandbox itself stays offline.

1. **Reuse at once.** The request (the base image's id, the requirement lines, the
   ``--find-links`` folders' listings, ``--no-index``) hashes to ``org.wflo.request-hash``;
   an image carrying it is reused without resolving anything.
2. **Resolve and download on the host**, for the base's platform (``site.platform_options``:
   wheels only, cp311, its architecture and glibc), constrained to the base's own pins (the
   runtime recipe's ``requirements.txt`` and the packages earlier layers added), so the
   base's numpy is kept and never downloaded twice into the layer.
3. **Install offline**: ``pip install --no-index --no-deps --target site`` of the resolved
   wheels the base does not already hold; the tag is ``wflo-pkgs:<hash>`` of the base
   image's id and that pinned set, so the same set on the same base is built once.
4. ``docker build --network none`` of ``derived/Dockerfile``: the layer in
   ``/opt/wflo/pkgs/<layer>``, a ``.pth`` file, bytecode, a metadata check. Labels:
   ``org.wflo.kind=derived``, ``org.wflo.packages`` (every added package of the image,
   ``name==version``), ``org.wflo.added`` (this layer's), ``org.wflo.requested``,
   ``org.wflo.derived-from``, ``org.wflo.request-hash``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.models.images import Image

from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.base import image_id
from wflo_jupyter.runtime.site import (
    Platform,
    pip_env,
    pip_python,
    platform_options,
    probe_platform,
    trim_site,
)
from wflo_jupyter.runtime.steps import (
    BuildError,
    CommandFailed,
    Progress,
    build_lock,
    docker_build,
    run_logged,
)

REPOSITORY = "wflo-pkgs"
KIND_LABEL = "org.wflo.kind"
PACKAGES_LABEL = "org.wflo.packages"
ADDED_LABEL = "org.wflo.added"
REQUESTED_LABEL = "org.wflo.requested"
DERIVED_FROM_LABEL = "org.wflo.derived-from"
REQUEST_LABEL = "org.wflo.request-hash"
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class PackageRequest:
    """What ``%wflo image add`` asked for: requirement lines, local wheel folders, and
    whether the index (PyPI or pip's configured one) may be asked at all."""

    specs: tuple[str, ...]
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def digest(self, base_id: str) -> str:
        parts = [f"base={base_id}", f"no-index={self.no_index}"]
        parts += [f"spec={spec}" for spec in sorted(self.specs)]
        for folder in sorted(self.find_links):
            path = Path(folder).resolve()
            listing = sorted(f"{p.name}:{p.stat().st_size}" for p in path.glob("*") if p.is_file())
            parts.append(f"links={path}:{','.join(listing)}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class DerivedImage:
    """A sandbox image with added packages (``tag`` is the base itself when nothing was
    missing from it)."""

    tag: str
    base: str
    packages: tuple[str, ...]  # every added package of the image: name==version, sorted
    added: tuple[str, ...]  # this request's new ones
    built: bool
    seconds: float


def image_packages(client: docker.DockerClient, image: str) -> tuple[str, ...]:
    """The packages wflo added to ``image`` (``name==version``; empty for the runtime)."""
    labels = client.images.get(image).labels or {}
    return tuple(labels.get(PACKAGES_LABEL, "").split())


def _pins(labels: dict[str, str]) -> dict[str, str]:
    pins = recipe.pinned(recipe.recipe_dir()) if recipe.RECIPE_LABEL in labels else {}
    for item in labels.get(PACKAGES_LABEL, "").split():
        name, _, version = item.partition("==")
        pins[normalise(name)] = version
    return pins


class DerivedImages:
    """Builds and finds derived images; ``home`` holds each build's scratch folder."""

    def __init__(self, client: docker.DockerClient, home: Path, progress: Progress) -> None:
        self.client = client
        self.scratch = home / "images"
        self.progress = progress

    def add(self, base: str, request: PackageRequest) -> DerivedImage:
        """The image ``base`` + ``request``: found, or resolved and built (see the module)."""
        started = time.monotonic()
        base_id = image_id(self.client, base)
        if base_id is None:
            raise BuildError(f"sandbox image {base!r} not found; build it with `wflo image build`")
        digest = request.digest(base_id)
        found = self._find(REQUEST_LABEL, digest)
        if found is not None:
            return self._reused(found, base, started)
        with build_lock(self.progress):
            found = self._find(REQUEST_LABEL, digest)
            if found is not None:
                return self._reused(found, base, started)
            work = self.scratch / digest[:16]
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                return self._build(base, base_id, request, digest, work, started)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _build(
        self,
        base: str,
        base_id: str,
        request: PackageRequest,
        digest: str,
        work: Path,
        started: float,
    ) -> DerivedImage:
        labels = dict(self.client.images.get(base).labels or {})
        pins = _pins(labels)
        platform = probe_platform(self.client, base)
        wheels = self._download(platform, request, pins, work)
        new = {n: (v, f) for n, (v, f) in wheels.items() if pins.get(n) != v}
        had = tuple(labels.get(PACKAGES_LABEL, "").split())
        if not new:
            self.progress(f"nothing to add: {base} already has {', '.join(request.specs)}")
            return DerivedImage(base, base, had, (), False, time.monotonic() - started)
        added = tuple(sorted(f"{n}=={v}" for n, (v, _f) in new.items()))
        packages = tuple(sorted({*had, *added}))
        layer = hashlib.sha256(f"{base_id}\n{' '.join(added)}".encode()).hexdigest()[:16]
        tag = f"{REPOSITORY}:{layer}"
        if image_id(self.client, tag) is None:
            site = work / "site"
            self._install(sorted(f for _v, f in new.values()), site)
            dockerfile = Path(__file__).resolve().parent / "derived" / "Dockerfile"
            shutil.copyfile(dockerfile, work / "Dockerfile")
            docker_build(
                self.client,
                work,
                tag,
                {"BASE": base, "LAYER": layer, "CHECK": " ".join(sorted(new))},
                {
                    KIND_LABEL: "derived",
                    PACKAGES_LABEL: " ".join(packages),
                    ADDED_LABEL: " ".join(added),
                    REQUESTED_LABEL: " ".join(request.specs),
                    DERIVED_FROM_LABEL: base,
                    REQUEST_LABEL: digest,
                },
                self.progress,
            )
            built = True
        else:
            self.progress(f"{tag} already holds {', '.join(added)}")
            built = False
        return DerivedImage(tag, base, packages, added, built, time.monotonic() - started)

    def _download(
        self, platform: Platform, request: PackageRequest, pins: dict[str, str], work: Path
    ) -> dict[str, tuple[str, Path]]:
        """Resolve and download the request's wheels: normalised name -> (version, wheel)."""
        constraints = work / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        links = [arg for folder in request.find_links for arg in ("--find-links", folder)]
        self.progress(
            f"resolving {', '.join(request.specs)} for the sandbox image ({platform.pytag}, "
            f"{platform.arch}, glibc {platform.glibc})..."
        )
        argv = [
            pip_python(self.progress),
            *("-m", "pip", "download", "--no-input", "--progress-bar", "off"),
            *("--dest", str(work / "wheels"), "--constraint", str(constraints)),
            *platform_options(platform),
            *(["--no-index"] if request.no_index else []),
            *links,
            *request.specs,
        ]
        try:
            run_logged(argv, "pip download", self.progress, env=pip_env())
        except CommandFailed as exc:
            raise BuildError(pip_failure(exc.output, platform)) from None
        found: dict[str, tuple[str, Path]] = {}
        for wheel in sorted((work / "wheels").glob("*.whl")):
            match = _WHEEL.match(wheel.name)
            if match:
                found[normalise(match["name"])] = (match["version"], wheel)
        return found

    def _install(self, wheels: list[Path], site: Path) -> None:
        """The wheels into ``site``, offline and without resolving again."""
        self.progress(f"installing {len(wheels)} wheels for the new layer (offline)...")
        run_logged(
            [
                pip_python(self.progress),
                *("-m", "pip", "install", "--no-input", "--progress-bar", "off"),
                *("--no-index", "--no-deps", "--no-compile", "--no-warn-script-location"),
                *("--target", str(site)),
                *(str(w) for w in wheels),
            ],
            "pip install",
            self.progress,
            env=pip_env(),
        )
        trim_site(site)

    def _find(self, label: str, value: str) -> Image | None:
        images = self.client.images.list(filters={"label": f"{label}={value}"})
        return images[0] if images else None

    def _reused(self, image: Image, base: str, started: float) -> DerivedImage:
        labels = image.labels or {}
        tag = next((t for t in image.tags if t.startswith(f"{REPOSITORY}:")), str(image.id))
        packages = tuple(labels.get(PACKAGES_LABEL, "").split())
        added = tuple(labels.get(ADDED_LABEL, "").split())
        self.progress(f"reusing {tag} ({', '.join(added)})")
        return DerivedImage(tag, base, packages, added, False, time.monotonic() - started)


def pip_failure(output: str, platform: Platform) -> str:
    """One line from pip's failure: the package and why."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    where = f"{platform.pytag}, {platform.arch}, glibc {platform.glibc}"
    for line in lines:
        missing = re.match(
            r"ERROR: Could not find a version that satisfies the requirement (\S+)"
            r"(?: \(from versions: (.*)\))?",
            line,
        )
        if missing:
            versions = missing[2] or "none"
            if versions == "none":
                return (
                    f"{missing[1]}: no wheel for the sandbox's platform ({where}), or no such "
                    "package on the index"
                )
            return (
                f"{missing[1]}: no wheel of a matching version for the sandbox's platform "
                f"({where}); versions with one: {versions}"
            )
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = [c for c in lines[start:] if "requested" in c or "depends on" in c][:4]
        return "cannot resolve the set: " + "; ".join(causes).replace("(constraint)", "(image)")
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    return errors[0] if errors else (lines[-1] if lines else "pip download failed")


__all__ = [
    "DerivedImage",
    "DerivedImages",
    "PackageRequest",
    "image_packages",
    "normalise",
    "pip_failure",
]
