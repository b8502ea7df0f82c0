"""The runtime image's recipe on this machine: which directory holds it (``Dockerfile``,
``requirements.txt``), its hash as the image build labels it, and its pinned packages.

The hash must equal what the build writes into ``org.wflo.recipe-hash``
(``core.doctor_rules.recipe_hash`` over every recipe file, the base image's name and id,
and ``SITE_FORMAT``); a unit test holds the two together.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from wflo_jupyter.core.doctor_rules import recipe_hash

RUNTIME = "python3.11"
SITE_FORMAT = 1
"""Bumped when the way the image's site-packages tree is made changes (also in the build)."""
GENERATED = ".build"
"""The build's own output inside the recipe directory: never part of the recipe."""
BUILD_COMMAND = "make runtime-image"
"""What a user runs to build (or rebuild) the image."""
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;#]+)")


def recipe_dir() -> Path | None:
    """The recipe's directory: the package's own copy when it carries one, else the
    checkout's ``runtimes/python3.11``; None when neither exists."""
    package = Path(__file__).resolve().parent
    for candidate in (package / RUNTIME, package.parents[1] / "runtimes" / RUNTIME):
        if (candidate / "Dockerfile").is_file():
            return candidate
    return None


def recipe_files(directory: Path) -> list[tuple[str, str]]:
    """(path relative to ``directory``, sha256 hex) of every recipe file."""
    files: list[tuple[str, str]] = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if relative.parts[0] == GENERATED or not path.is_file():
            continue
        files.append((relative.as_posix(), hashlib.sha256(path.read_bytes()).hexdigest()))
    return files


def current_hash(directory: Path, base: str, base_id: str) -> str:
    """The hash an image built now from ``directory`` on ``base`` would carry."""
    return recipe_hash(base, base_id, SITE_FORMAT, recipe_files(directory))


def pinned(directory: Path) -> dict[str, str]:
    """``requirements.txt``'s pins: normalised package name -> version."""
    pins: dict[str, str] = {}
    requirements = directory / "requirements.txt"
    if not requirements.is_file():
        return pins
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.split("#", 1)[0].strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


__all__ = ["BUILD_COMMAND", "RUNTIME", "SITE_FORMAT", "current_hash", "pinned", "recipe_dir"]
