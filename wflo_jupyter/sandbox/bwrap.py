"""Bubblewrap isolation: the session agent under ``bwrap`` where no Docker engine runs.

``BubblewrapLauncher`` starts the SAME agent (``sandbox/agent/``) over the SAME framed
Unix-socket channel as the Docker containers, so ``SandboxSession``'s timeouts,
interrupts and death detection are unchanged. The sandbox is weaker than Docker's (no
seccomp filter, the host's ``/usr`` and system ``python3`` instead of the runtime image,
cgroup limits only where a writable cgroup exists), and every cell says so in a notice.

The command line (arguments after ``bwrap`` go through ``--args FD``, so the agent's token
never shows in the host's ``ps``)::

    [python -I -S -c HOST_SHIM UID GID CGROUP_PROCS... --]   # root: join cgroup, drop to 1000
    bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
          --uid 1000 --gid 1000 --hostname wflo-sandbox
          --ro-bind /usr /usr --symlink usr/bin /bin ...        # /bin /sbin /lib* as on the host
          --ro-bind /etc/alternatives ... (ld.so.cache, localtime, python3*, fonts, ...)
          --ro-bind AUX/etc/passwd /etc/passwd (group, hosts, hostname: synthetic)
          --proc /proc --dev /dev --size 64m --perms 1777 --tmpfs /dev/shm --remount-ro /dev
          --size 256m --perms 0700 --tmpfs /workspace --size 64m --perms 1777 --tmpfs /tmp
          --ro-bind AUX/agent /opt/wflo-agent --ro-bind SOCK_DIR /run/wflo --remount-ro /
          --chdir /workspace --clearenv --setenv HOME /workspace ... (SANDBOX_ENV + token)
          -- /usr/bin/python3 -I -S -c LIMITS_SHIM AS NPROC 0 --       # rlimits, then exec
             /usr/bin/python3 -I /opt/wflo-agent/agent.py /run/wflo/agent.sock

How it runs as uid 1000 (``BwrapSupport.mode``, probed once per process):

- ``user``: not root: bwrap runs as the caller in a new user namespace; uid 1000 inside
  is the caller's uid outside.
- ``drop``: root, and unprivileged user namespaces work: a tiny host shim joins the
  cgroup, drops to uid/gid 1000 (no supplementary groups) and execs bwrap, which then
  runs exactly like ``user``: uid 1000 inside and outside, no capabilities anywhere. The
  socket and agent directories live under ``$TMPDIR/wflo-0-bwrap`` (mode 0711) because
  uid 1000 must reach them; each is 0700 and owned by uid 1000.
- ``root``: root, unprivileged user namespaces disabled: bwrap runs as root and creates
  the user namespace with its capabilities; uid 1000 inside is uid 0 outside, without
  any capability in the host's namespace (it can still read root-owned files that are
  bound in, which is why ``/etc`` is a minimal, mostly synthetic set). Noted per cell.

Limits: rlimits are set INSIDE the new user namespace (``RLIMIT_NPROC`` is counted per
user per namespace, so set outside it would count every host process of that uid):
``RLIMIT_NPROC`` = pids limit, ``RLIMIT_CORE`` = 0, and ``RLIMIT_AS`` = memory limit
when no cgroup memory controller is available (``MemoryError`` in the cell). A cgroup
(v2 when its controllers are delegated to a writable group, else v1 as root) gets
``memory`` (no swap), ``pids`` and ``cpu`` limits; a cgroup OOM kill is reported like
Docker's. The wall-clock timeout stays the host's interrupt-then-kill.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.core.steps import format_size, parse_size
from wflo_jupyter.sandbox.backend import AgentHandle, AgentLauncher
from wflo_jupyter.sandbox.orphans import kernel_alive, reap_socket_dirs
from wflo_jupyter.sandbox.socket_dirs import default_socket_base
from wflo_jupyter.sandbox.types import (
    AGENT_MOUNT,
    SANDBOX_ENV,
    SANDBOX_UID,
    SOCKET_MOUNT,
    LaunchRequest,
    SandboxLimits,
)

SANDBOX_PYTHON = "/usr/bin/python3"
"""The interpreter that runs the agent inside the sandbox (must live under ``/usr``)."""
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
MODE_USER = "user"
MODE_DROP = "drop"
MODE_ROOT = "root"
CGROUP_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
LOG_TAIL_BYTES = 8192
MB = 1024 * 1024
ADDRESS_SPACE_HEADROOM = 512 * MB
"""Added to the memory limit when it becomes ``RLIMIT_AS`` (no cgroup memory controller):
address space is not memory, and the idle agent already reserves ~390 MB of it (thread
stacks, malloc arenas) with ~21 MB resident (measured, Debian 12, python 3.11)."""
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
"""The whole environment bwrap itself runs with. bwrap's own process is the sandbox's
pid 1, and its environment would otherwise be the kernel's (provider keys included)."""

_HOST_SHIM = """\
import os, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
end = sys.argv.index("--")
for path in sys.argv[3:end]:
    try:
        with open(path, "w") as procs:
            procs.write(str(os.getpid()))
    except OSError as exc:
        sys.stderr.write(f"wflo: cannot join cgroup {path}: {exc}\\n")
        os._exit(121)
if uid >= 0:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
os.execv(sys.argv[end + 1], sys.argv[end + 1 :])
"""
"""Runs on the host (as the kernel's user) between fork and bwrap: joins the sandbox's
cgroup and, as root, drops to uid/gid 1000 before exec'ing bwrap."""

_LIMITS_SHIM = """\
import os, resource, sys
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_CORE"), sys.argv[1:4]):
    if int(value) >= 0:
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
os.execv(sys.argv[5], sys.argv[5:])
"""
"""Runs inside the sandbox (after the user namespace exists): sets the rlimits, then
becomes the agent."""

_PRLIMIT_SHIM = """\
import resource, sys
pid = int(sys.argv[1])
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC"), sys.argv[2:4]):
    if int(value) >= 0:
        resource.prlimit(pid, getattr(resource, name), (int(value), int(value)))
"""
"""Changes a running agent's rlimits from the host. Run as uid 1000 when the sandbox is
uid 1000 on the host (``drop``): root may lack CAP_SYS_RESOURCE (it does in containers),
while the namespace's owner may always change its processes' limits."""


# -- probing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BwrapSupport:
    """How bubblewrap works on this machine (see the module docstring for ``mode``)."""

    bwrap: str
    mode: str
    python: str
    features: frozenset[str] = field(default_factory=frozenset)

    @property
    def drops_privileges(self) -> bool:
        return self.mode == MODE_DROP


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, str, int, str], BwrapSupport] = {}


def find_bwrap(path: str | None = None) -> str | None:
    """The ``bwrap`` executable on ``path`` (default: ``PATH``), or None."""
    return shutil.which("bwrap", path=path)


def _features(bwrap: str) -> frozenset[str]:
    """Optional bwrap options this version knows (``--disable-userns`` needs 0.8)."""
    try:
        done = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = done.stdout + done.stderr
    return frozenset(
        option
        for option in ("disable-userns", "size", "perms", "args", "remount-ro")
        if f"--{option} " in text
    )


def probe_bubblewrap(
    bwrap: str | None = None,
    *,
    python: str = SANDBOX_PYTHON,
    mode: str | None = None,
    path: str | None = None,
) -> BwrapSupport:
    """How ``bwrap`` can run the sandbox here: each candidate mode is tried once by running
    ``python3 -I -S -c pass`` in the real sandbox layout (cached per process).
    ``SandboxError`` (one line) when bwrap is missing or no mode works."""
    exe = bwrap or find_bwrap(path)
    if exe is None or not os.access(exe, os.X_OK):
        raise SandboxError(
            "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)"
        )
    euid = os.geteuid()
    candidates = [mode] if mode else ([MODE_DROP, MODE_ROOT] if euid == 0 else [MODE_USER])
    key = (exe, python, euid, ",".join(candidates))
    with _probe_lock:
        cached = _probe_cache.get(key)
        if cached is not None:
            return cached
        if not _under_system_dirs(python):
            raise SandboxError(
                f"the bubblewrap sandbox runs {python}, which is not under /usr; "
                "use the system python3 (/usr/bin/python3)"
            )
        features = _features(exe)
        if "args" not in features:
            raise SandboxError(f"{exe} is too old for the sandbox (it has no --args)")
        problems: list[str] = []
        for candidate in candidates:
            support = BwrapSupport(exe, candidate, python, features)
            problem = _try_mode(support)
            if problem is None:
                _probe_cache[key] = support
                return support
            problems.append(f"{candidate}: {problem}")
        raise SandboxError(f"bubblewrap at {exe} does not work here ({'; '.join(problems)})")


def _under_system_dirs(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith("/usr/") and os.access(real, os.X_OK)


def _try_mode(support: BwrapSupport) -> str | None:
    """None if ``python -c pass`` runs in the sandbox in this mode, else bwrap's complaint."""
    args = sandbox_arguments(support, limits=SandboxLimits(), environment=SANDBOX_ENV)
    read_end = _args_pipe(args)
    try:
        argv = host_command(support, read_end, [support.python, "-I", "-S", "-c", "pass"])
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            pass_fds=(read_end,),
            cwd="/",
            env=HOST_ENV,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.close(read_end)
    if done.returncode == 0:
        return None
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


# -- the command line -------------------------------------------------------------------


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
        _HOST_SHIM,
        str(uid),
        str(gid),
        *join,
        "--",
        *bwrap,
    ]


def _args_pipe(args: Sequence[str]) -> int:
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


# -- cgroups ----------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, mount root, fstype, super options) of every cgroup mount."""
    found: list[tuple[str, str, str, set[str]]] = []
    with contextlib.suppress(OSError):
        for line in _read(Path("/proc/self/mountinfo")).splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                mount_point = fields[4].replace("\\040", " ")
                found.append((mount_point, fields[3], tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in _read(Path("/proc/self/cgroup")).splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else [""]:
                    paths[controller] = parts[2]
    return paths


def _join_path(mount_point: str, mount_root: str, own: str) -> Path | None:
    root = mount_root.rstrip("/")
    if root and own != root and not own.startswith(root + "/"):
        return None
    return Path(mount_point) / own[len(root) :].lstrip("/")


class Cgroup:
    """The cgroup of one sandbox with its limits written (v2: one directory for every
    controller; v1: one directory per controller hierarchy)."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(c for c in CGROUP_CONTROLLERS if c in self.dirs)

    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self._unique_dirs()]

    @classmethod
    def create(cls, name: str, limits: SandboxLimits) -> Cgroup | None:
        """A new cgroup ``name`` with ``limits`` where one can be made, else None."""
        own = _own_paths()
        mounts = _mounts()
        for mount_point, mount_root, fstype, _ in mounts:
            if fstype == "cgroup2" and "" in own:
                created = cls._create_v2(mount_point, mount_root, own[""], name, limits)
                if created is not None:
                    return created
        return cls._create_v1(mounts, own, name, limits)

    @classmethod
    def _create_v2(
        cls, mount_point: str, mount_root: str, own: str, name: str, limits: SandboxLimits
    ) -> Cgroup | None:
        mine = _join_path(mount_point, mount_root, own)
        if mine is None:
            return None
        candidates = [mine]
        if mine != Path(mount_point):
            candidates.append(mine.parent)  # a sibling of ours (v2: no internal processes)
        for parent in candidates:
            try:
                available = _read(parent / "cgroup.controllers").split()
                enabled = _read(parent / "cgroup.subtree_control").split()
            except OSError:
                continue
            missing = [c for c in CGROUP_CONTROLLERS if c in available and c not in enabled]
            if missing and parent == mine:  # never reconfigure a group we are not in
                with contextlib.suppress(OSError):
                    _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
                with contextlib.suppress(OSError):
                    enabled = _read(parent / "cgroup.subtree_control").split()
            usable = [c for c in CGROUP_CONTROLLERS if c in enabled]
            if not usable or not os.access(parent / "cgroup.procs", os.W_OK):
                continue
            _reap_stale(parent)
            try:
                (parent / name).mkdir()
            except OSError:
                continue
            group = cls(2, dict.fromkeys(usable, parent / name))
            if group._limit_each(limits):
                return group
            group.remove()
        return None

    @classmethod
    def _create_v1(
        cls,
        mounts: list[tuple[str, str, str, set[str]]],
        own: dict[str, str],
        name: str,
        limits: SandboxLimits,
    ) -> Cgroup | None:
        dirs: dict[str, Path] = {}
        for controller in CGROUP_CONTROLLERS:
            for mount_point, mount_root, fstype, options in mounts:
                if fstype != "cgroup" or controller not in options or controller not in own:
                    continue
                parent = _join_path(mount_point, mount_root, own[controller])
                if parent is None or not os.access(parent / "cgroup.procs", os.W_OK):
                    continue
                _reap_stale(parent)
                try:
                    (parent / name).mkdir(exist_ok=True)
                except OSError:
                    continue
                dirs[controller] = parent / name
                break
        if not dirs:
            return None
        group = cls(1, dirs)
        if group._limit_each(limits):
            return group
        group.remove()
        return None

    def _limit_each(self, limits: SandboxLimits) -> bool:
        """Write each controller's limit; drop (and remove) controllers that refuse.
        True if any controller is left."""
        for controller in list(self.dirs):
            try:
                self._limit(controller, limits)
            except OSError:
                directory = self.dirs.pop(controller)
                if self.version == 1:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
        return bool(self.dirs)

    def set_limits(self, limits: SandboxLimits) -> None:
        """Change every controller's limit (``OSError`` if one refuses)."""
        for controller in self.controllers:
            self._limit(controller, limits)

    def _limit(self, controller: str, limits: SandboxLimits) -> None:
        directory = self.dirs[controller]
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.version == 2:
            if controller == "memory":
                _write(directory / "memory.max", str(limits.memory_bytes))
                if (directory / "memory.swap.max").exists():
                    _write(directory / "memory.swap.max", "0")
            elif controller == "pids":
                _write(directory / "pids.max", str(limits.pids_limit))
            else:
                _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        if controller == "memory":
            files = [directory / "memory.limit_in_bytes"]
            if (directory / "memory.memsw.limit_in_bytes").exists():
                files.append(directory / "memory.memsw.limit_in_bytes")
            try:  # lowering: memory first; raising: memory+swap first
                for path in files:
                    _write(path, str(limits.memory_bytes))
            except OSError:
                for path in reversed(files):
                    _write(path, str(limits.memory_bytes))
        elif controller == "pids":
            _write(directory / "pids.max", str(limits.pids_limit))
        else:
            _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(directory / "cpu.cfs_quota_us", str(quota))

    def oom_kills(self) -> int:
        directory = self.dirs.get("memory")
        if directory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in _read(directory / name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self._unique_dirs():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in _read(directory / "cgroup.procs").split())
        return found

    def kill_all(self) -> None:
        for directory in self._unique_dirs():
            if self.version == 2 and (directory / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(directory / "cgroup.kill", "1")
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout_s: float = 3.0) -> bool:
        """Remove the directories (killing what is left in them). True if all went."""
        deadline = time.monotonic() + timeout_s
        remaining = self._unique_dirs()
        while True:
            for directory in list(remaining):
                try:
                    directory.rmdir()
                    remaining.remove(directory)
                except FileNotFoundError:
                    remaining.remove(directory)
                except OSError:
                    pass
            if not remaining or time.monotonic() >= deadline:
                return not remaining
            self.kill_all()
            time.sleep(0.05)


def _reap_stale(parent: Path) -> list[Path]:
    """Remove empty ``wflo-<pid>-*`` cgroups of kernels that are gone."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            pid_text = entry.name[5:].split("-", 1)[0]
            if (
                entry.name.startswith("wflo-")
                and pid_text.isdigit()
                and int(pid_text) != os.getpid()
                and not kernel_alive(int(pid_text))
            ):
                with contextlib.suppress(OSError):
                    entry.rmdir()
                    removed.append(entry)
    return removed


def _cgroup_parents() -> list[Path]:
    """Where this process's sandboxes get their cgroups (v2 and v1 candidates)."""
    own = _own_paths()
    parents: list[Path] = []
    for mount_point, mount_root, fstype, options in _mounts():
        if fstype == "cgroup2" and "" in own:
            mine = _join_path(mount_point, mount_root, own[""])
            if mine is not None:
                parents += [mine] if mine == Path(mount_point) else [mine, mine.parent]
        elif fstype == "cgroup":
            for controller in CGROUP_CONTROLLERS:
                if controller in options and controller in own:
                    found = _join_path(mount_point, mount_root, own[controller])
                    if found is not None:
                        parents.append(found)
    return list(dict.fromkeys(parents))


# -- processes --------------------------------------------------------------------------


class _Spawner:
    """Starts sandboxes from ONE long-lived thread. ``--die-with-parent`` is
    ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked bwrap ends: a sandbox
    started from a short-lived thread (the kernel's pre-warm thread) would die with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[
            tuple[list[str], tuple[int, ...], list[object], threading.Event]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="wflo-sandbox-spawner", daemon=True
                )
                self._thread.start()
        outcome: list[object] = []
        done = threading.Event()
        self._requests.put((argv, pass_fds, outcome, done))
        done.wait()
        (value,) = outcome
        if isinstance(value, BaseException):
            raise value
        assert isinstance(value, subprocess.Popen)
        return value

    def _serve(self) -> None:
        while True:
            argv, pass_fds, outcome, done = self._requests.get()
            try:
                outcome.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        pass_fds=pass_fds,
                        cwd="/",
                        env=HOST_ENV,
                        start_new_session=True,
                    )
                )
            except BaseException as exc:
                outcome.append(exc)
            done.set()


_spawner = _Spawner()


class _LogTail:
    """Drains a process's stdout+stderr in a thread, keeping only the last bytes."""

    def __init__(self, stream: IO[bytes] | None, limit: int = LOG_TAIL_BYTES) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()
        self._stream = stream
        if stream is not None:
            threading.Thread(target=self._drain, name="wflo-sandbox-log", daemon=True).start()

    def _drain(self) -> None:
        """Reads until EOF (every sandbox process has exited), then closes the pipe. Only
        this thread closes it: closed elsewhere, its fd number could be reused by another
        file while this thread still reads it."""
        assert self._stream is not None
        fd = self._stream.fileno()
        try:
            self._read_all(fd)
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()

    def _read_all(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)
                self._size += len(data)
                while self._size - len(self._chunks[0]) >= self._limit:
                    self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", "replace")


def _exit_code(returncode: int | None) -> int | None:
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


class ProcessAgent(AgentHandle):
    """An agent started as a host process (bwrap, or the plain ``unisolated`` agent)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        id_prefix: str,
        cleanup: Iterable[Path] = (),
        cgroup: Cgroup | None = None,
        notice: str | None = None,
        kill_group: bool = False,
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.notice = notice
        self._id = f"{id_prefix}-{proc.pid}"
        self._cleanup = list(cleanup)
        self._kill_group = kill_group
        self._log = _LogTail(proc.stdout)
        self._destroyed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def poll(self) -> int | None:
        return _exit_code(self.proc.poll())

    def known_dead(self) -> bool:
        return self.proc.poll() is not None

    def wait_exit(self, timeout_s: float) -> tuple[int | None, bool]:
        code: int | None
        try:
            code = _exit_code(self.proc.wait(timeout=max(0.0, timeout_s)))
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        oom = self.cgroup is not None and self.cgroup.oom_kills() > 0
        return code, oom

    def kill(self) -> None:
        if self._kill_group:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.cgroup is not None:
            self.cgroup.remove()
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        return None

    def logs_tail(self) -> str:
        return self._log.text()


def _descendants(root: int) -> list[int]:
    """Host pids below ``root`` (from /proc, breadth first)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat_fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat_fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


class BubblewrapAgent(ProcessAgent):
    """The agent under bwrap: limits change through the cgroup and ``prlimit``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], *, support: BwrapSupport, **kwargs: Any
    ) -> None:
        super().__init__(proc, **kwargs)
        self.support = support

    @property
    def memory_by_cgroup(self) -> bool:
        return self.cgroup is not None and "memory" in self.cgroup.controllers

    def explain_error(self, ename: str, limits: SandboxLimits) -> str | None:
        if ename == "MemoryError" and not self.memory_by_cgroup:
            return (
                f"the sandbox's memory limit {format_size(limits.memory_bytes)} was reached "
                "(an address-space rlimit: no cgroup memory controller here); state is kept"
            )
        return None

    def _agent_pid(self) -> int | None:
        """The agent's host pid: the python whose argv[2] is the agent (bwrap's own
        processes carry the same words further along their command lines)."""
        agent = f"{AGENT_MOUNT}/agent.py".encode()
        for pid in _descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if len(argv) > 2 and argv[1] == b"-I" and argv[2] == agent:
                    return pid
        return None

    def apply_limits(self, limits: SandboxLimits) -> str | None:
        problems: list[str] = []
        if self.cgroup is not None:
            try:
                self.cgroup.set_limits(limits)
            except OSError as exc:
                problems.append(f"cgroup: {exc.strerror or exc}")
        pid = self._agent_pid()
        if pid is None:
            problems.append("the agent process was not found")
        else:
            space = -1 if self.memory_by_cgroup else limits.memory_bytes + ADDRESS_SPACE_HEADROOM
            problem = self._prlimit(pid, space, limits.pids_limit)
            if problem:
                problems.append(f"prlimit: {problem}")
        return "; ".join(problems) or None

    def _prlimit(self, pid: int, space: int, nproc: int) -> str | None:
        if not self.support.drops_privileges:
            try:
                if space >= 0:
                    resource.prlimit(pid, resource.RLIMIT_AS, (space, space))
                resource.prlimit(pid, resource.RLIMIT_NPROC, (nproc, nproc))
            except OSError as exc:
                return exc.strerror or str(exc)
            return None
        try:
            done = subprocess.run(
                [
                    self.support.python,
                    "-I",
                    "-S",
                    "-c",
                    _PRLIMIT_SHIM,
                    str(pid),
                    str(space),
                    str(nproc),
                ],
                capture_output=True,
                text=True,
                env=HOST_ENV,
                cwd="/",
                user=SANDBOX_UID,
                group=SANDBOX_GID,
                extra_groups=[],
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return lines[-1] if lines else f"exit code {done.returncode}"
        return None


# -- the launcher -----------------------------------------------------------------------


def _traversable_dir(path: Path) -> Path:
    """``path`` as a directory owned by us, mode 0711 (others may pass, not list)."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SandboxError(f"sandbox socket directory {path} is not a directory owned by us")
    if stat.S_IMODE(info.st_mode) != 0o711:
        path.chmod(0o711)
    return path


def shared_socket_base() -> Path:
    """Where root's bubblewrap sandboxes keep their sockets (uid 1000 must reach them)."""
    return Path(tempfile.gettempdir()) / f"wflo-{os.geteuid()}-bwrap"


_reaped_once = False


def reap_bubblewrap_leftovers() -> list[Path]:
    """Remove socket/agent directories and empty cgroups of dead kernels' bubblewrap
    sandboxes (their processes died with the kernel: ``--die-with-parent``)."""
    removed: list[Path] = []
    for base in (default_socket_base(), shared_socket_base()):
        removed += reap_socket_dirs(base)
    for parent in _cgroup_parents():
        removed += _reap_stale(parent)
    return removed


def isolation_notice(support: BwrapSupport, cgroup: Cgroup | None) -> str:
    """The one line every cell of a bubblewrap sandbox carries."""
    weaker = ["no seccomp filter", "the host's /usr is visible read-only"]
    if support.mode == MODE_ROOT:
        weaker.append("runs as host root without capabilities")
    limited = cgroup.controllers if cgroup is not None else ()
    if len(limited) == len(CGROUP_CONTROLLERS):
        limits = "cgroup limits on memory, pids, cpu"
    else:
        missing = []
        if "memory" not in limited:
            missing.append("no cgroup memory limit (RLIMIT_AS caps address space)")
        if "pids" not in limited:
            missing.append("processes capped by RLIMIT_NPROC only")
        if "cpu" not in limited:
            missing.append("no CPU limit")
        limits = ", ".join(missing)
    return f"[isolation: bubblewrap — weaker isolation than Docker: {', '.join(weaker)}; {limits}]"


class BubblewrapLauncher(AgentLauncher):
    """Runs the agent under bubblewrap (``isolation == "bubblewrap"``). The runtime image
    does not exist here: cells get the host's system ``python3`` and its packages."""

    isolation = "bubblewrap"

    def __init__(
        self,
        bwrap: str | None = None,
        *,
        python: str = SANDBOX_PYTHON,
        use_cgroup: bool = True,
        mode: str | None = None,
    ) -> None:
        self.bwrap = bwrap
        self.python = python
        self.use_cgroup = use_cgroup
        self.mode = mode
        self._support: BwrapSupport | None = None

    @property
    def support(self) -> BwrapSupport:
        if self._support is None:
            self._support = probe_bubblewrap(self.bwrap, python=self.python, mode=self.mode)
        return self._support

    def prepare(self, image: str) -> None:
        global _reaped_once
        _ = self.support
        if not _reaped_once:
            _reaped_once = True
            with contextlib.suppress(OSError):
                reap_bubblewrap_leftovers()

    def socket_base(self, requested: Path | None) -> Path:
        if self.support.drops_privileges:
            return _traversable_dir(shared_socket_base())
        return super().socket_base(requested)

    def grant_access(self, directory: Path, sock_path: Path) -> None:
        # drop: the sandbox is uid 1000 on the host too; user / root: it is our own uid.
        if self.support.drops_privileges:
            os.chown(directory, SANDBOX_UID, SANDBOX_GID)
            os.chown(sock_path, SANDBOX_UID, SANDBOX_GID)

    def _aux_dir(self, request: LaunchRequest) -> Path:
        """The sandbox's private agent copy and synthetic ``/etc`` files."""
        aux = Path(f"{request.sock_dir}-aux")
        aux.mkdir(mode=0o700)
        (aux / "agent").mkdir(mode=0o755)
        for source in request.agent_dir.glob("*.py"):
            target = aux / "agent" / source.name
            shutil.copyfile(source, target)
            target.chmod(0o644)
        (aux / "etc").mkdir(mode=0o755)
        for name, text in SYNTHETIC_ETC.items():
            (aux / "etc" / name).write_text(text, encoding="utf-8")
            (aux / "etc" / name).chmod(0o644)
        if self.support.drops_privileges:
            os.chown(aux, SANDBOX_UID, SANDBOX_GID)
        return aux

    def launch(self, request: LaunchRequest) -> AgentHandle:
        support = self.support
        limits = request.limits
        aux: Path | None = None
        cgroup: Cgroup | None = None
        try:
            aux = self._aux_dir(request)
            if self.use_cgroup:
                cgroup = Cgroup.create(f"wflo-{os.getpid()}-{secrets.token_hex(4)}", limits)
            memory_by_cgroup = cgroup is not None and "memory" in cgroup.controllers
            inner = [
                support.python,
                "-I",
                "-S",
                "-c",
                _LIMITS_SHIM,
                str(-1 if memory_by_cgroup else limits.memory_bytes + ADDRESS_SPACE_HEADROOM),
                str(limits.pids_limit),
                "0",
                "--",
                support.python,
                "-I",
                f"{AGENT_MOUNT}/agent.py",
                f"{SOCKET_MOUNT}/{request.socket_name}",
            ]
            args = sandbox_arguments(
                support,
                limits=limits,
                environment=request.environment,
                aux_dir=aux,
                sock_dir=request.sock_dir,
            )
            read_end = _args_pipe(args)
            try:
                join = cgroup.procs_files() if cgroup is not None else []
                argv = host_command(support, read_end, inner, join)
                proc = _spawner.popen(argv, (read_end,))
            finally:
                os.close(read_end)
        except (OSError, subprocess.SubprocessError) as exc:
            if cgroup is not None:
                cgroup.remove()
            if aux is not None:
                shutil.rmtree(aux, ignore_errors=True)
            raise SandboxError(
                f"could not start the bubblewrap sandbox: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            if aux is not None:
                shutil.rmtree(aux, ignore_errors=True)
            raise
        return BubblewrapAgent(
            proc,
            support=support,
            id_prefix="bwrap",
            cleanup=[aux],
            cgroup=cgroup,
            notice=isolation_notice(support, cgroup),
        )


__all__ = [
    "SANDBOX_PYTHON",
    "BubblewrapAgent",
    "BubblewrapLauncher",
    "BwrapSupport",
    "Cgroup",
    "ProcessAgent",
    "find_bwrap",
    "host_command",
    "isolation_notice",
    "probe_bubblewrap",
    "reap_bubblewrap_leftovers",
    "sandbox_arguments",
]
