"""The runtime image's recipe, shipped in the package (``python3.11/``: ``Dockerfile``,
``requirements.txt``): where it is, its hash as the image build labels it, and its pins.

The hash is ``core.doctor_rules.recipe_hash`` over every recipe file, the base image's
name and id, and ``SITE_FORMAT``: the same value images built before the recipe moved
into the package carry, so those stay current.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from wflo_jupyter.core.doctor_rules import recipe_hash

RUNTIME = "python3.11"
SITE_FORMAT = 1
"""Bump when the way the image's site-packages tree is made changes (pip options,
trimming): it enters both the site key and the recipe hash, so images are rebuilt."""
BUILD_COMMAND = "wflo image build"
"""What a user runs to build (or rebuild) the image."""
DEFAULT_TAG = "wflo-runtime:python3.11"
RECIPE_LABEL = "org.wflo.recipe-hash"
BASE_LABEL = "org.wflo.runtime-base"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;#]+)")


def recipe_dir() -> Path:
    """The recipe's directory inside the installed package."""
    return Path(__file__).resolve().parent / RUNTIME


def recipe_files(directory: Path) -> list[tuple[str, str]]:
    """(path relative to ``directory``, sha256 hex) of every file of the recipe."""
    files: list[tuple[str, str]] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(directory).as_posix()
            files.append((relative, hashlib.sha256(path.read_bytes()).hexdigest()))
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


__all__ = [
    "BASE_LABEL",
    "BUILD_COMMAND",
    "DEFAULT_TAG",
    "RECIPE_LABEL",
    "RUNTIME",
    "SITE_FORMAT",
    "current_hash",
    "pinned",
    "recipe_dir",
    "recipe_files",
]
