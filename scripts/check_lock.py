"""Checks that keep ``requirements.lock`` honest.

``requirements.lock`` is written by ``make lock`` (``uv pip compile --universal
--generate-hashes``) from ``pyproject.toml``: the core dependencies, every extra and the
``tooling`` dependency group. Two things can drift:

- ``pyproject.toml`` against the lock: a dependency missing from the lock, or a locked
  version below (or otherwise outside) a floor. ``check_pyproject`` finds both.
- an installed environment against the lock: a package at another version than the
  lock's, or one the lock does not list. ``check_environment`` finds both.

    python scripts/check_lock.py             # pyproject.toml against the lock
    python scripts/check_lock.py --env       # also this interpreter's packages
    python scripts/check_lock.py --lock requirements-bench.lock --groups tooling,bench
    python scripts/check_lock.py --lock requirements-litellm.lock --only-groups litellm-proxy

Exit 1 with one line per problem. Needs ``packaging`` (locked: hatchling and pip
depend on it) and Python 3.11+ (``tomllib``).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = "wflo-jupyter"
LOCK_GROUPS = ("tooling",)


@dataclass(frozen=True)
class Pin:
    """One ``name==version [; marker]`` entry of the lock."""

    name: str
    version: Version
    marker: Marker | None
    hashes: int

    def applies(self) -> bool:
        """Whether this interpreter and platform install it."""
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """The lock's pins by canonical name (hash lines counted, comments skipped)."""
    pins: dict[str, Pin] = {}
    current: str | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[0].isspace():
            if current is not None and line.startswith("--hash="):
                pin = pins[current]
                pins[current] = Pin(pin.name, pin.version, pin.marker, pin.hashes + 1)
            continue
        requirement = Requirement(line.rstrip("\\").strip())
        (spec,) = requirement.specifier
        if spec.operator != "==":
            raise ValueError(f"{path.name}: {line!r} is not an exact pin")
        current = canonicalize_name(requirement.name)
        pins[current] = Pin(current, Version(spec.version), requirement.marker, 0)
    return pins


def project_requirements(
    path: Path = PYPROJECT, groups: tuple[str, ...] = LOCK_GROUPS, *, only_groups: bool = False
) -> list[Requirement]:
    """Every requirement the lock must satisfy: core, all extras, the named groups (only
    the groups with ``only_groups``: a lock of a tool's own environment)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    project = data["project"]
    texts: list[str] = []
    if not only_groups:
        texts += project.get("dependencies", [])
        for extra in project.get("optional-dependencies", {}).values():
            texts += extra
    for group in groups:
        texts += data.get("dependency-groups", {})[group]
    return [Requirement(text) for text in texts]


def check_pyproject(
    requirements: list[Requirement], pins: dict[str, Pin], *, need_hashes: bool = True
) -> list[str]:
    """Problems between ``pyproject.toml``'s requirements and the lock."""
    problems: list[str] = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement} is in pyproject.toml but not in the lock")
            continue
        if not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(
                f"the lock has {name}=={pin.version}, outside pyproject.toml's {requirement}"
            )
        for extra in sorted(requirement.extras):
            # psycopg[binary]: the extra's packages must be locked too
            wanted = [
                r
                for r in _extra_requirements(name, extra)
                if r.marker is None or r.marker.evaluate({"extra": extra})
            ]
            problems += [
                f"{r.name} (from {requirement}) is not in the lock"
                for r in wanted
                if canonicalize_name(r.name) not in pins
            ]
    if need_hashes:
        problems += [
            f"{pin.name} has no --hash in the lock" for pin in pins.values() if not pin.hashes
        ]
    return problems


def _extra_requirements(name: str, extra: str) -> list[Requirement]:
    """The requirements ``name[extra]`` adds, read from the installed distribution (none
    when it is not installed: the lock resolver already included them)."""
    try:
        texts = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for text in texts:
        requirement = Requirement(text)
        if requirement.marker is not None and f'extra == "{extra}"' in str(requirement.marker):
            found.append(requirement)
    return found


def installed_versions() -> dict[str, Version]:
    """This interpreter's distributions (the project itself left out)."""
    found: dict[str, Version] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name != PROJECT:
            found[name] = Version(dist.version)
    return found


def check_environment(pins: dict[str, Pin], installed: dict[str, Version]) -> list[str]:
    """Problems between what is installed and what the lock says for this platform."""
    problems = [
        f"{name}=={version} is installed but not in the lock"
        for name, version in sorted(installed.items())
        if name not in pins
    ]
    for pin in sorted(pins.values(), key=lambda p: p.name):
        if not pin.applies():
            continue
        have = installed.get(pin.name)
        if have is None:
            problems.append(f"{pin.name}=={pin.version} is in the lock but not installed")
        elif have != pin.version:
            problems.append(f"{pin.name} is {have}, the lock says {pin.version}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="store_true", help="also check installed packages")
    parser.add_argument("--lock", type=Path, default=LOCK, help="the lock file")
    parser.add_argument("--groups", default=",".join(LOCK_GROUPS), help="dependency groups")
    parser.add_argument(
        "--only-groups", default=None, help="these dependency groups alone, not the project"
    )
    args = parser.parse_args(argv)
    pins = read_lock(args.lock)
    only = args.only_groups is not None
    groups = tuple(g for g in (args.only_groups if only else args.groups).split(",") if g)
    problems = check_pyproject(project_requirements(groups=groups, only_groups=only), pins)
    if args.env:
        problems += check_environment(pins, installed_versions())
    for problem in problems:
        print(f"[wflo] lock: {problem}", file=sys.stderr)
    if problems:
        print(
            "[wflo] lock: run `make lock` (or `make install` for the environment)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
