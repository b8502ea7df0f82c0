"""The folders that hold the sandboxes' Unix sockets, and who may enter them.

Each sandbox gets its own socket directory (``s<kernel pid>-*``) under a base directory
that we own and nobody else may list: ``default_socket_base()`` (mode 0700), or, for
root's bubblewrap sandboxes that run as uid 1000 on the host, a traversable one (0711,
``sandbox.bwrap.shared_socket_base``). ``grant_sandbox_access`` lets the sandbox's user
(uid 1000) connect to one socket. Dead kernels' directories are removed by
``sandbox.orphans.reap_socket_dirs``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.types import SANDBOX_UID


def default_socket_base() -> Path:
    return Path(tempfile.gettempdir()) / f"wflo-{os.geteuid()}"


def owned_dir(path: Path, mode: int) -> Path:
    """``path`` as a directory owned by us with ``mode``, not a symlink (created if
    missing)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SandboxError(f"sandbox socket directory {path} is not a directory owned by us")
    if stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a directory owned by us, mode 0700, not a symlink (created if missing)."""
    return owned_dir(path, 0o700)


def grant_sandbox_access(directory: Path, sock_path: Path) -> None:
    """Let uid 1000 in the container connect to the socket, and as few others as we can."""
    euid = os.geteuid()
    if euid == 0:
        os.chown(directory, SANDBOX_UID, SANDBOX_UID)  # stays 0700: root and uid 1000 only
        os.chown(sock_path, SANDBOX_UID, SANDBOX_UID)
    elif euid != SANDBOX_UID:
        # Cannot chown: open the path to others; the per-container token in `ready`
        # authenticates the agent, and the socket is unlinked once it connected.
        directory.chmod(0o711)
        sock_path.chmod(0o666)


__all__ = ["default_socket_base", "grant_sandbox_access", "owned_dir", "private_dir"]
