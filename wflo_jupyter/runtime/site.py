"""The image's Python packages, installed on the HOST from wheels only, for the base
image's Python (cp311), architecture and glibc: ``pip install --target <site>
--only-binary=:all: --platform manylinux_... -r requirements.txt``. The Dockerfile copies
that tree into the image, so the build needs neither pip in the image nor network.

The tree is kept in ``WFLO_HOME/runtime/python3.11/.build/site`` under a key of
``requirements.txt``, the platform and ``SITE_FORMAT`` (``site.key``): a rebuild for the
same requirements downloads nothing (and pip's own cache serves wheels it fetched before).
The host's pip: ``WFLO_PIP_PYTHON``, else this Python, else ``python3``; as root on Debian
``python3-pip`` is installed when none has pip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from wflo_jupyter.runtime.base import apt_install
from wflo_jupyter.runtime.recipe import SITE_FORMAT
from wflo_jupyter.runtime.steps import BuildError, Progress, run_logged

_PROBE = (
    "import os, sys, sysconfig; "
    'print("cp%d%d" % sys.version_info[:2], sysconfig.get_platform().split("-", 1)[1], '
    'os.confstr("CS_GNU_LIBC_VERSION").split()[1])'
)
TRIMMED_TESTS = ("numpy", "pandas", "pyarrow", "matplotlib", "mpl_toolkits")


@dataclass(frozen=True)
class Platform:
    """The base image's Python tag, architecture and glibc."""

    pytag: str
    arch: str
    glibc: str

    def manylinux(self) -> list[str]:
        """Every manylinux tag this glibc runs, newest first (pip prefers the first)."""
        minor = int(self.glibc.removeprefix("2."))
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{self.arch}", f"manylinux1_{self.arch}"]
        return tags


def probe_platform(client: docker.DockerClient, base: str) -> Platform:
    try:
        output = client.containers.run(
            base, ["-c", _PROBE], entrypoint="python3", network_mode="none", remove=True
        )
    except (DockerException, requests.RequestException) as exc:
        raise BuildError(f"cannot run python3 in base image {base}: {exc}") from None
    pytag, arch, glibc = bytes(output).decode().split()
    if pytag != "cp311":
        raise BuildError(f"base image {base} has Python {pytag}; the recipe is for cp311")
    minor = glibc.removeprefix("2.")
    if not minor.isdigit() or int(minor) < 17:
        raise BuildError(f"base image {base} has glibc {glibc!r}; manylinux wheels need >= 2.17")
    return Platform(pytag, arch, glibc)


def site_key(platform: Platform, requirements: bytes) -> str:
    head = (
        f"site-format={SITE_FORMAT}\npython={platform.pytag}\n"
        f"platforms={' '.join(platform.manylinux())}\n"
    )
    return hashlib.sha256(head.encode() + requirements).hexdigest()


def pip_python(progress: Progress) -> str:
    """A Python with pip on the host (it targets the base's Python by options)."""
    wanted = os.environ.get("WFLO_PIP_PYTHON")
    if wanted:
        if not _has_pip(wanted):
            raise BuildError(f"WFLO_PIP_PYTHON={wanted} has no pip")
        return wanted
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate and _has_pip(candidate):
            return candidate
    if os.geteuid() == 0 and shutil.which("apt-get"):
        apt_install(["python3-pip"], progress)
        if _has_pip("/usr/bin/python3"):
            return "/usr/bin/python3"
    raise BuildError(
        "no python with pip on this machine to fetch the runtime image's wheels; install pip "
        "(Debian: apt-get install python3-pip) or set WFLO_PIP_PYTHON"
    )


def _has_pip(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-m", "pip", "--version"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def pip_env() -> dict[str, str]:
    """The host pip's environment: no virtualenv or --user requirement, no version check,
    no colours (its lines are read and shown)."""
    return {
        **os.environ,
        "PIP_REQUIRE_VIRTUALENV": "0",
        "PIP_USER": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_COLOR": "1",
    }


def platform_options(platform: Platform) -> list[str]:
    """pip's options for wheels of ``platform`` only (nothing compiled on the host)."""
    platforms = [arg for tag in platform.manylinux() for arg in ("--platform", tag)]
    return [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        "3.11",
        "--abi",
        platform.pytag,
        *platforms,
    ]


def prepare_site(
    client: docker.DockerClient, base: str, requirements: Path, build_dir: Path, progress: Progress
) -> None:
    """Make ``build_dir/site`` hold ``requirements`` installed for ``base``'s platform,
    unless it already does."""
    platform = probe_platform(client, base)
    site, key_file, new = build_dir / "site", build_dir / "site.key", build_dir / "site.new"
    key = site_key(platform, requirements.read_bytes())
    shutil.rmtree(new, ignore_errors=True)  # left by an interrupted run; never built from
    if site.is_dir() and key_file.is_file() and key_file.read_text().strip() == key:
        progress(
            f"python packages up to date ({platform.pytag}, {platform.arch}; nothing to download)"
        )
        return
    python = pip_python(progress)
    count = sum(1 for line in requirements.read_text().splitlines() if "==" in line.split("#")[0])
    progress(
        f"downloading {count} wheels for the runtime image ({platform.pytag}, {platform.arch}, "
        f"glibc {platform.glibc}) with {python}..."
    )
    started = time.monotonic()
    build_dir.mkdir(parents=True, exist_ok=True)
    # --target keeps the host's environments untouched (and is allowed on an externally
    # managed Python); --only-binary: wheels only, nothing compiled.
    log = run_logged(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-input",
            "--progress-bar",
            "off",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            str(new),
            *platform_options(platform),
            "-r",
            str(requirements),
        ],
        "pip install",
        progress,
        env=pip_env(),
    )
    cached = sum(
        1 for line in log.splitlines() if line.lstrip().startswith(("Using cached", "Processing /"))
    )
    trim_site(new)
    shutil.rmtree(site, ignore_errors=True)
    key_file.unlink(missing_ok=True)
    new.rename(site)
    key_file.write_text(key + "\n")
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) // 2**20
    progress(
        f"python packages ready: {size} MB installed, {cached} of {count} wheels were already "
        f"on this machine, {time.monotonic() - started:.0f} s"
    )


def trim_site(site: Path) -> None:
    """Drop what a sandbox never uses: console scripts (their #! names the host's python),
    the libraries' own test suites, C/C++ headers and sources; readable by uid 1000 whatever
    the host's umask, writable by nobody else."""
    for path in (site / "bin", site / "pyarrow" / "include", site / "pyarrow" / "src"):
        shutil.rmtree(path, ignore_errors=True)
    for package in TRIMMED_TESTS:
        if (site / package).is_dir():
            for tests in [p for p in (site / package).rglob("tests") if p.is_dir()]:
                shutil.rmtree(tests, ignore_errors=True)
    for cache in [p for p in site.rglob("__pycache__") if p.is_dir()]:
        shutil.rmtree(cache, ignore_errors=True)
    for path in [site, *site.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o7777  # chmod u+rwX,go+rX,go-w
        wanted = (mode | 0o644 | (0o111 if path.is_dir() or mode & 0o111 else 0)) & ~0o022
        if wanted != mode:
            os.chmod(path, wanted)


__all__ = [
    "Platform",
    "pip_env",
    "pip_python",
    "platform_options",
    "prepare_site",
    "probe_platform",
    "site_key",
    "trim_site",
]
