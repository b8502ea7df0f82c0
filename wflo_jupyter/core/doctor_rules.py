"""The doctor's rules: what each probe saw (plain values) -> one ``Finding`` with its level
and remedy. Also the runtime image's recipe hash, computed exactly as the image build
labels it (``org.wflo.recipe-hash``), so "is the image current" is a string comparison.

Pure and stdlib-only: the probes in ``wflo_jupyter.doctor`` fill the ``*Seen`` values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wflo_jupyter.core.doctor import FAIL, INFO, OK, SKIP, WARN, Finding

GIB = 1024**3
DISK_FAIL_BYTES = 1 * GIB
"""Below this, free space under ``WFLO_HOME`` blocks the quickstart (the image, the
engines' data and the wheels cache need more)."""
DISK_WARN_BYTES = 4 * GIB
REQUIRED_ENGINES = ("postgres", "temporal")
"""Engines without which no step runs; a down Redis or Kafka only degrades (no cache,
events wait in the outbox)."""
ENCODINGS = ("o200k_base", "cl100k_base")
"""The tokenizer encodings the ledger's estimates use for today's OpenAI models."""
MIN_PYTHON = (3, 11)
BUBBLEWRAP_FALLBACK = (
    "the bubblewrap fallback works here (WFLO_ISOLATION=bubblewrap: weaker isolation, "
    "the host's python3 without the image's packages)"
)


def recipe_hash(base: str, base_id: str, site_format: int, files: Iterable[tuple[str, str]]) -> str:
    """The runtime image's recipe hash: sha256 over ``base=``, ``base-id=``,
    ``site-format=`` lines, then one ``./PATH SHA256`` line per recipe file (paths as
    ``./Dockerfile``, sorted bytewise). ``files``: (path relative to the recipe
    directory, sha256 hex of its content)."""
    lines = [f"base={base}", f"base-id={base_id}", f"site-format={site_format}"]
    entries = sorted(
        ((f"./{path.removeprefix('./')}", digest) for path, digest in files),
        key=lambda entry: entry[0].encode(),  # LC_ALL=C sort: bytewise
    )
    lines += [f"{path} {digest}" for path, digest in entries]
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


# -- the sandbox --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DockerSeen:
    address: str
    version: str | None = None  # the engine's version when it answered
    api_version: str | None = None
    error: str | None = None  # why it did not answer


@dataclass(frozen=True)
class BwrapSeen:
    works: bool
    detail: str  # the mode it runs in, or why it does not work
    installed: bool = True


def sandbox_findings(isolation: str, docker: DockerSeen, bwrap: BwrapSeen) -> list[Finding]:
    """The Docker engine's line and the bubblewrap fallback's line for ``isolation``
    (``WFLO_ISOLATION``: auto | docker | bubblewrap | unisolated)."""
    if isolation in ("bubblewrap", "unisolated"):
        lines = [Finding("Docker engine", INFO, "not used", f"WFLO_ISOLATION={isolation}")]
        if isolation == "unisolated":
            lines.append(Finding("bubblewrap fallback", INFO, "not used", "WFLO_ISOLATION"))
            lines.append(
                Finding(
                    "isolation",
                    WARN,
                    "none",
                    "cells run on this machine with your permissions",
                    "unset WFLO_ISOLATION to run cells in Docker (or bubblewrap)",
                )
            )
            return lines
        if bwrap.works:
            lines.append(Finding("bubblewrap fallback", OK, "works", f"mode {bwrap.detail}"))
        else:
            lines.append(
                Finding(
                    "bubblewrap fallback",
                    FAIL,
                    "not usable",
                    bwrap.detail,
                    _bwrap_remedy(bwrap) + ", or unset WFLO_ISOLATION to use Docker",
                )
            )
        return lines
    if docker.error is None:
        version = f"Docker {docker.version or '?'} (API {docker.api_version or '?'})"
        lines = [Finding("Docker engine", OK, "ok", f"{version} at {docker.address}")]
    else:
        remedy = (
            "start the Docker engine (`make docker` in a checkout, `sudo systemctl start "
            "docker`, or Docker Desktop) or point WFLO_DOCKER_HOST at one"
        )
        if bwrap.works:
            remedy += (
                "; meanwhile cells fall back to bubblewrap, which works here"
                if isolation == "auto"
                else f"; {BUBBLEWRAP_FALLBACK}"
            )
        lines = [
            Finding(
                "Docker engine",
                FAIL,
                "unreachable",
                f"no answer at {docker.address} ({docker.error})",
                remedy,
            )
        ]
    if bwrap.works:
        used = "the sandbox until Docker answers" if docker.error else "used only without Docker"
        lines.append(Finding("bubblewrap fallback", OK, "works", f"mode {bwrap.detail}; {used}"))
    else:
        remedy = _bwrap_remedy(bwrap) if docker.error else ""
        lines.append(Finding("bubblewrap fallback", INFO, "not usable", bwrap.detail, remedy))
    return lines


def _bwrap_remedy(bwrap: BwrapSeen) -> str:
    if not bwrap.installed:
        return "install bubblewrap (apt-get install bubblewrap)"
    return "see `wflo doctor --json` for bwrap's complaint; user namespaces may be off"


@dataclass(frozen=True)
class ImageSeen:
    image: str
    present: bool
    label_hash: str | None = None  # org.wflo.recipe-hash of the built image
    base: str | None = None  # org.wflo.runtime-base
    base_present: bool = False
    recipe_hash: str | None = None  # the recipe's hash now (None: recipe not found)
    error: str | None = None


def image_finding(seen: ImageSeen | None, build_command: str, *, why_not: str = "") -> Finding:
    """The runtime image: missing (blocks), stale against its recipe (warns), current.
    ``seen`` is None when it could not be looked at (``why_not`` says why)."""
    check = "runtime image"
    if seen is None:
        return Finding(check, SKIP, "not checked", why_not or "no Docker engine answers")
    if seen.error is not None:
        return Finding(check, WARN, "unknown", f"{seen.image}: {seen.error}")
    if not seen.present:
        return Finding(
            check, FAIL, "missing", f"{seen.image} is not built", f"build it: `{build_command}`"
        )
    if seen.recipe_hash is None:
        return Finding(
            check,
            WARN,
            "unknown",
            f"{seen.image} is built, but its recipe is not in this installation",
            "",
        )
    if seen.base is None or seen.label_hash is None:
        return Finding(
            check,
            WARN,
            "stale",
            f"{seen.image} carries no recipe label (built by hand?)",
            f"rebuild: `{build_command}`",
        )
    if not seen.base_present:
        return Finding(
            check,
            WARN,
            "stale",
            f"{seen.image}: its base image {seen.base} is gone",
            f"rebuild: `{build_command}`",
        )
    if seen.label_hash != seen.recipe_hash:
        return Finding(
            check,
            WARN,
            "stale",
            f"{seen.image} was built from recipe {seen.label_hash[:12]}; "
            f"the recipe is now {seen.recipe_hash[:12]}",
            f"rebuild: `{build_command}`",
        )
    return Finding(
        check, OK, "current", f"{seen.image}, recipe {seen.label_hash[:12]}, base {seen.base}"
    )


# -- the engines -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSeen:
    engine: str
    address: str | None  # None: the local stack does not run it
    source: str  # the WFLO_* variable it came from, or "local stack"
    answered: bool = False
    version: str | None = None
    error: str | None = None  # why it did not answer; with no address: why it cannot start
    variable: str = ""  # the WFLO_* variable that points at an engine of one's own


_DEGRADED = {
    "redis": "LLM calls go uncached",
    "kafka": "events wait in the ledger's outbox",
}


def engine_finding(seen: EngineSeen) -> Finding:
    """One engine: answering (with its version), down (with its address and remedy), or
    not running in the local stack (started on demand)."""
    name = seen.engine
    if seen.address is None and seen.error:
        return Finding(
            name,
            INFO if name == "kafka" else FAIL,
            "not installed",
            f"the local stack cannot start it: {seen.error}",
            "pip install 'wflo-jupyter[local]'"
            + (f", or set {seen.variable} to a server of yours" if seen.variable else ""),
        )
    if seen.address is None:
        if name == "kafka":
            return Finding(
                name,
                INFO,
                "not running",
                "not configured; events wait in the ledger's outbox",
                "`wflo up --with-kafka` (or set WFLO_KAFKA_BOOTSTRAP)",
            )
        return Finding(
            name,
            INFO,
            "not running",
            "local stack, not started",
            "`wflo up` starts it (the first %%wflo cell does too)",
        )
    where = f"{seen.address} ({seen.source})"
    if seen.answered:
        version = f"{name} {seen.version}" if seen.version else name
        return Finding(name, OK, "ok", f"{version} at {where}")
    if seen.source == "local stack":
        remedy = "`wflo down && wflo up` restarts the local stack"
    else:
        remedy = f"start the server at {seen.address}, or fix {seen.source}"
    if name in _DEGRADED:
        remedy += f" (until then {_DEGRADED[name]})"
    level = FAIL if name in REQUIRED_ENGINES else WARN
    return Finding(name, level, "down", f"{where}: {seen.error or 'no answer'}", remedy)


# -- the host ----------------------------------------------------------------------------------
def python_finding(version: Sequence[int], executable: str) -> Finding:
    text = ".".join(str(v) for v in version[:3])
    if tuple(version[:2]) < MIN_PYTHON:
        return Finding(
            "Python",
            FAIL,
            "too old",
            f"{text} ({executable})",
            "install wflo-jupyter into a Python 3.11 or newer",
        )
    return Finding("Python", OK, "ok", f"{text} ({executable})")


def sdk_finding(name: str, image_pin: str | None, host_version: str | None) -> Finding:
    """An LLM SDK: the version cells get (pinned by the image's recipe) and the host's."""
    host = host_version or "not installed (not needed)"
    if image_pin is None:
        return Finding(f"{name} SDK", INFO, "unknown", f"sandbox: not in the recipe; host: {host}")
    return Finding(f"{name} SDK", OK, "ok", f"sandbox {image_pin}; host {host}")


def tokenizer_finding(found: Sequence[str], where: str) -> Finding:
    """The tokenizer encodings that load offline (the ledger's exact prompt counts)."""
    missing = [name for name in ENCODINGS if name not in found]
    if not missing:
        return Finding("tokenizer", OK, "ok", f"{', '.join(found)} (offline)")
    names = ", ".join(missing)
    return Finding(
        "tokenizer",
        WARN,
        "missing",
        f"{names} not available offline" + (f"; have {', '.join(found)}" if found else ""),
        f"put {missing[0]}.tiktoken in {where} (meanwhile estimates count UTF-8 bytes, "
        "a safe upper bound)",
    )


def disk_finding(path: str, free_bytes: int) -> Finding:
    """Free space under ``WFLO_HOME``: engines' data, images, the wheels cache."""
    found = f"{free_bytes / GIB:.1f} GiB free under {path}"
    if free_bytes < DISK_FAIL_BYTES:
        return Finding("disk space", FAIL, "full", found, "free at least 1 GiB there")
    if free_bytes < DISK_WARN_BYTES:
        return Finding("disk space", WARN, "low", found, "free some space (4 GiB is comfortable)")
    return Finding("disk space", OK, "ok", found)


__all__ = [
    "ENCODINGS",
    "BwrapSeen",
    "DockerSeen",
    "EngineSeen",
    "ImageSeen",
    "disk_finding",
    "engine_finding",
    "image_finding",
    "python_finding",
    "recipe_hash",
    "sandbox_findings",
    "sdk_finding",
    "tokenizer_finding",
]
