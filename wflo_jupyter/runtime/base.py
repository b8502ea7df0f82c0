"""The base image the runtime is built FROM: chosen, pulled, or built without a registry.

Choice: the ``--base`` given (``WFLO_RUNTIME_BASE``); else the base the current image was
built from, while it is still present; else ``python:3.11-slim`` or ``wflo-base:bookworm``
when present locally; else ``docker pull python:3.11-slim`` (25 s at most); else
``wflo-base:bookworm``, built from a Debian mirror with ``debootstrap --variant=minbase
--include=python3`` and ``docker import`` (root only; no registry needed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import docker
import requests
from docker.errors import DockerException, ImageNotFound

from wflo_jupyter.runtime.steps import BuildError, Progress, run_logged

REGISTRY_BASE = "python:3.11-slim"
LOCAL_BASE = "wflo-base:bookworm"
SUITE = "bookworm"
PULL_TIMEOUT_S = 25.0
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEBIAN_URI = re.compile(r"/debian(/[0-9]{8}T[0-9]{6}Z)?/?$")  # also snapshot.debian.org


def image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        return str(client.images.get(name).id)
    except ImageNotFound:
        return None


def pull(client: docker.DockerClient, name: str, timeout_s: float = PULL_TIMEOUT_S) -> bool:
    """``docker pull name`` within ``timeout_s``; False when no registry gave it."""
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            client.images.pull(repository or name, tag=tag or "latest")
        except (DockerException, requests.RequestException) as exc:
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="wflo-image-pull", daemon=True).start()
    return done.wait(timeout_s) and not failed and image_id(client, name) is not None


def choose_base(
    client: docker.DockerClient, explicit: str | None, previous: str | None, progress: Progress
) -> str:
    """The base to build on, present locally when this returns (see the module)."""
    if explicit:
        if image_id(client, explicit) is None:
            progress(f"pulling base image {explicit}...")
            if not pull(client, explicit):
                raise BuildError(f"base image {explicit} is not present and cannot be pulled")
        return explicit
    if previous and image_id(client, previous) is not None:
        return previous
    for candidate in (REGISTRY_BASE, LOCAL_BASE):
        if image_id(client, candidate) is not None:
            return candidate
    progress(f"trying docker pull {REGISTRY_BASE} (at most {PULL_TIMEOUT_S:.0f} s)...")
    if pull(client, REGISTRY_BASE):
        return REGISTRY_BASE
    progress("no registry answers; using a base built from a Debian mirror instead")
    build_local_base(client, progress)
    return LOCAL_BASE


def debian_mirror() -> str:
    """``WFLO_DEBIAN_MIRROR``, else the Debian archive of the apt sources, else the default."""
    if os.environ.get("WFLO_DEBIAN_MIRROR"):
        return os.environ["WFLO_DEBIAN_MIRROR"]
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in _read(sources):
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if _DEBIAN_URI.search(uri):
                        return uri.rstrip("/")
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for sources in lists:
        for line in _read(sources):
            words = re.sub(r"\[[^]]*\]", " ", line).split()
            if len(words) >= 2 and words[0] == "deb" and _DEBIAN_URI.search(words[1]):
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def apt_install(packages: list[str], progress: Progress) -> None:
    if shutil.which("apt-get") is None:
        raise BuildError(f"need {' '.join(packages)} but apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    progress(f"installing {' '.join(packages)} with apt...")
    run_logged(
        ["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-qq"],
        "apt-get update",
        progress,
        env=env,
    )
    run_logged(
        [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=120",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *packages,
        ],
        "apt-get install",
        progress,
        env=env,
    )


def build_local_base(
    client: docker.DockerClient, progress: Progress, name: str = LOCAL_BASE
) -> None:
    """``name`` (``wflo-base:bookworm``) from a Debian mirror: debootstrap, trim, then
    ``docker import``."""
    if os.geteuid() != 0:
        raise BuildError(
            f"building {name} with debootstrap needs root (or pass --base with an image you have)"
        )
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], progress)
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").is_file():
        apt_install(["debian-archive-keyring"], progress)
    mirror = debian_mirror()
    parent = Path(os.environ.get("WFLO_ROOTFS_TMPDIR", "/var/tmp"))  # must allow device nodes
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="wflo-rootfs.", dir=parent))
    rootfs = workdir / "rootfs"
    try:
        progress(f"building base image {name} from Debian mirror {mirror} (about 60 s)...")
        try:
            run_logged(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                "debootstrap",
                progress,
            )
        except BuildError as exc:
            raise BuildError(
                f"debootstrap could not build a {SUITE} rootfs in {rootfs} from {mirror} (a "
                "nodev/noexec filesystem? set WFLO_ROOTFS_TMPDIR; a mirror problem? set "
                f"WFLO_DEBIAN_MIRROR): {str(exc).splitlines()[-1]}"
            ) from None
        _trim_rootfs(rootfs)
        progress(f"importing the rootfs as {name}...")
        _import(client, rootfs, name)
    finally:
        _remove_rootfs(workdir)
    progress(f"base image {name} ready")


def _trim_rootfs(rootfs: Path) -> None:
    """Drop what a sandbox never needs; keep the host's name and resolver out."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "var/log/*",
        "tmp/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    (rootfs / "etc" / "resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc" / "resolv.conf").write_text("")
    (rootfs / "etc" / "hostname").write_text("wflo\n")


def _import(client: docker.DockerClient, rootfs: Path, name: str) -> None:
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    try:
        repository, _, tag = name.rpartition(":")
        client.api.import_image_from_stream(
            tar.stdout,
            repository=repository,
            tag=tag,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                "LABEL org.wflo.base=debootstrap-bookworm-minbase",
                'CMD ["python3"]',
            ],
        )
    except (DockerException, requests.RequestException) as exc:
        raise BuildError(f"docker import of the {SUITE} rootfs failed ({exc})") from None
    finally:
        tar.stdout.close()
        tar.wait()
    if image_id(client, name) is None:
        raise BuildError(f"docker import of the {SUITE} rootfs made no {name}")


def _remove_rootfs(workdir: Path) -> None:
    """Remove the rootfs, never deleting through a mount debootstrap left inside it."""
    mounts = [
        line.split()[1]
        for line in _read(Path("/proc/mounts"))
        if len(line.split()) > 1 and line.split()[1].startswith(f"{workdir}/")
    ]
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)


__all__ = ["LOCAL_BASE", "REGISTRY_BASE", "build_local_base", "choose_base", "image_id", "pull"]
