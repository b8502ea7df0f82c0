"""Cgroup limits for bubblewrap sandboxes, where a writable cgroup exists: v2 when its
controllers are delegated to a group we may write (ours, or a sibling of ours), else v1
as root. Each sandbox gets its own ``wflo-<kernel pid>-<random>`` group with ``memory``
(no swap), ``pids`` and ``cpu`` limits; controllers that refuse are dropped (the sandbox
then falls back to rlimits). Empty groups of dead kernels are removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from wflo_jupyter.sandbox.orphans import left_by_dead_kernel
from wflo_jupyter.sandbox.types import SandboxLimits

CGROUP_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


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
            reap_stale(parent)
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
                reap_stale(parent)
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


def reap_stale(parent: Path) -> list[Path]:
    """Remove empty ``wflo-<pid>-*`` cgroups of kernels that are gone."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if left_by_dead_kernel(entry.name, "wflo-"):
                with contextlib.suppress(OSError):
                    entry.rmdir()
                    removed.append(entry)
    return removed


def cgroup_parents() -> list[Path]:
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


__all__ = ["CGROUP_CONTROLLERS", "Cgroup", "cgroup_parents", "reap_stale"]
