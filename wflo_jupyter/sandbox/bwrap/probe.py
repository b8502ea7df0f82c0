"""How bubblewrap works on this machine: which ``bwrap`` (and which of its options), and
in which mode it can run the sandbox as uid 1000 (``user``, ``drop`` or ``root``; see
``sandbox.bwrap``). Each candidate mode is tried once by running ``python3 -c pass`` in
the real sandbox layout; the answer is kept for the process's life (``ProbeCache``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.bwrap.argv import HOST_ENV, args_pipe, host_command, sandbox_arguments
from wflo_jupyter.sandbox.types import SANDBOX_ENV, SandboxLimits

SANDBOX_PYTHON = "/usr/bin/python3"
"""The interpreter that runs the agent inside the sandbox (must live under ``/usr``)."""
MODE_USER = "user"
MODE_DROP = "drop"
MODE_ROOT = "root"


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


class ProbeCache:
    """The probes' answers, kept for the process's life: (bwrap, python, euid, candidate
    modes) -> the ``BwrapSupport`` that worked. Probing holds ``lock`` (one probe at a
    time); a failed probe is not kept (it is tried again next time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[tuple[str, str, int, str], BwrapSupport] = {}


_probes = ProbeCache()


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
    with _probes.lock:
        cached = _probes.found.get(key)
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
                _probes.found[key] = support
                return support
            problems.append(f"{candidate}: {problem}")
        raise SandboxError(f"bubblewrap at {exe} does not work here ({'; '.join(problems)})")


def _under_system_dirs(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith("/usr/") and os.access(real, os.X_OK)


def _try_mode(support: BwrapSupport) -> str | None:
    """None if ``python -c pass`` runs in the sandbox in this mode, else bwrap's complaint."""
    args = sandbox_arguments(support, limits=SandboxLimits(), environment=SANDBOX_ENV)
    read_end = args_pipe(args)
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


__all__ = [
    "MODE_DROP",
    "MODE_ROOT",
    "MODE_USER",
    "SANDBOX_PYTHON",
    "BwrapSupport",
    "ProbeCache",
    "find_bwrap",
    "probe_bubblewrap",
]
