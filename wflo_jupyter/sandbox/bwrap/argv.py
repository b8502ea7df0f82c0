"""The bubblewrap command line: ``sandbox_arguments`` (bwrap's options, passed through
``--args FD`` so the agent's token never shows in ``ps``; ``args_pipe`` makes that FD),
``host_command`` (the host-side argv, behind the shim that joins the cgroup and drops
root), and the environment bwrap itself runs with (``HOST_ENV``).

The sandbox sees the host's ``/usr`` (and ``/bin``, ``/lib*`` as on the host) read-only,
a few entries of its ``/etc`` plus synthetic ``passwd`` / ``group`` / ``hosts`` /
``hostname``, private ``/proc`` and ``/dev``, size-limited tmpfs ``/workspace``, ``/tmp``
and ``/dev/shm``, the agent and the socket directory read-only, and nothing else.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import parse_size
from wflo_jupyter.sandbox.bwrap.scripts import HOST_SHIM
from wflo_jupyter.sandbox.types import AGENT_MOUNT, SANDBOX_UID, SOCKET_MOUNT, SandboxLimits

if TYPE_CHECKING:
    from wflo_jupyter.sandbox.bwrap.probe import BwrapSupport

SANDBOX_GID = SANDBOX_UID
HOSTNAME = "wflo-sandbox"
SHM_SIZE = "64m"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "nsswitch.conf",
    "mime.types",
    "fonts",
    "matplotlibrc",
)
"""What of the host's ``/etc`` the sandbox sees (read-only), besides ``/etc/python3*``."""
SYNTHETIC_ETC = {
    "passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"wflo:x:{SANDBOX_UID}:{SANDBOX_GID}:wflo sandbox:/workspace:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\nwflo:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "hostname": f"{HOSTNAME}\n",
}
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""The whole environment bwrap itself runs with. bwrap's own process is the sandbox's
pid 1, and its environment would otherwise be the kernel's (provider keys included)."""


def _tmpfs(support: BwrapSupport, dest: str, size: str | None, perms: str) -> list[str]:
    args: list[str] = []
    if size is not None and "size" in support.features:
        args += ["--size", str(parse_size(size))]
    if "perms" in support.features:
        args += ["--perms", perms]
    return [*args, "--tmpfs", dest]


def _etc_entries() -> list[str]:
    names = [name for name in ETC_ENTRIES if os.path.lexists(f"/etc/{name}")]
    names += sorted(os.path.basename(p) for p in glob.glob("/etc/python3*"))
    return names


def sandbox_arguments(
    support: BwrapSupport,
    *,
    limits: SandboxLimits,
    environment: Mapping[str, str],
    aux_dir: Path | None = None,
    sock_dir: Path | None = None,
) -> list[str]:
    """The options of ``bwrap`` (passed through ``--args FD``; the command follows on the
    command line, bwrap does not take it from there)."""
    args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
    if "disable-userns" in support.features:
        args.append("--disable-userns")
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--hostname", HOSTNAME]
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for name in _etc_entries():
        args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    if aux_dir is not None:
        for name in SYNTHETIC_ETC:
            args += ["--ro-bind", str(aux_dir / "etc" / name), f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += _tmpfs(support, "/dev/shm", SHM_SIZE, "1777")
    if "remount-ro" in support.features:
        args += ["--remount-ro", "/dev"]
    args += _tmpfs(support, "/workspace", limits.workspace_size, "0700")
    args += _tmpfs(support, "/tmp", limits.tmp_size, "1777")
    if aux_dir is not None:
        args += ["--ro-bind", str(aux_dir / "agent"), AGENT_MOUNT]
    if sock_dir is not None:
        args += ["--ro-bind", str(sock_dir), SOCKET_MOUNT]
    if "remount-ro" in support.features:
        args += ["--remount-ro", "/"]
    args += ["--chdir", "/workspace", "--clearenv"]
    for name, value in environment.items():
        args += ["--setenv", name, value]
    return args


def host_command(
    support: BwrapSupport, args_fd: int, command: Sequence[str], join: Sequence[str] = ()
) -> list[str]:
    """The host-side argv: bwrap reading its options from ``args_fd`` and running
    ``command``, behind the shim that joins the cgroup (``join``: ``cgroup.procs`` files)
    and drops root, if needed."""
    bwrap = [support.bwrap, "--args", str(args_fd), "--", *command]
    if not join and not support.drops_privileges:
        return bwrap
    uid, gid = (SANDBOX_UID, SANDBOX_GID) if support.drops_privileges else (-1, -1)
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        HOST_SHIM,
        str(uid),
        str(gid),
        *join,
        "--",
        *bwrap,
    ]


def args_pipe(args: Sequence[str]) -> int:
    """A pipe's read end holding ``args`` NUL-separated (for ``bwrap --args``)."""
    data = b"".join(arg.encode() + b"\0" for arg in args)
    read_end, write_end = os.pipe()
    try:
        if len(data) > 60_000:  # a pipe holds 64 KiB; ours are ~3 KiB
            raise SandboxError("the bubblewrap command line is too long")
        os.write(write_end, data)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


__all__ = [
    "HOSTNAME",
    "HOST_ENV",
    "SANDBOX_GID",
    "SYNTHETIC_ETC",
    "args_pipe",
    "host_command",
    "sandbox_arguments",
]
