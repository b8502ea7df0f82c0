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

Modules: ``scripts`` (the small Python programs run on the host and in the sandbox),
``probe`` (how bwrap works here, probed once per process), ``argv`` (the command line),
``cgroups`` (limits through a cgroup where one can be made), ``launcher``
(``BubblewrapLauncher``, ``BubblewrapAgent``, leftovers of dead kernels).
"""

from wflo_jupyter.sandbox.bwrap.argv import host_command, sandbox_arguments
from wflo_jupyter.sandbox.bwrap.cgroups import Cgroup
from wflo_jupyter.sandbox.bwrap.launcher import (
    BubblewrapAgent,
    BubblewrapLauncher,
    isolation_notice,
    reap_bubblewrap_leftovers,
    shared_socket_base,
)
from wflo_jupyter.sandbox.bwrap.probe import (
    SANDBOX_PYTHON,
    BwrapSupport,
    find_bwrap,
    probe_bubblewrap,
)

__all__ = [
    "SANDBOX_PYTHON",
    "BubblewrapAgent",
    "BubblewrapLauncher",
    "BwrapSupport",
    "Cgroup",
    "find_bwrap",
    "host_command",
    "isolation_notice",
    "probe_bubblewrap",
    "reap_bubblewrap_leftovers",
    "sandbox_arguments",
    "shared_socket_base",
]
