"""The small Python programs bubblewrap sandboxes need, kept as strings and run with
``python -I -S -c``: one on the host before bwrap (join the cgroup, drop root), one inside
the sandbox before the agent (rlimits), one on the host to change a running agent's
rlimits.
"""

HOST_SHIM = """\
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

LIMITS_SHIM = """\
import os, resource, sys
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_CORE"), sys.argv[1:4]):
    if int(value) >= 0:
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
os.execv(sys.argv[5], sys.argv[5:])
"""
"""Runs inside the sandbox (after the user namespace exists): sets the rlimits, then
becomes the agent."""

PRLIMIT_SHIM = """\
import resource, sys
pid = int(sys.argv[1])
for name, value in zip(("RLIMIT_AS", "RLIMIT_NPROC"), sys.argv[2:4]):
    if int(value) >= 0:
        resource.prlimit(pid, getattr(resource, name), (int(value), int(value)))
"""
"""Changes a running agent's rlimits from the host. Run as uid 1000 when the sandbox is
uid 1000 on the host (``drop``): root may lack CAP_SYS_RESOURCE (it does in containers),
while the namespace's owner may always change its processes' limits."""


__all__ = ["HOST_SHIM", "LIMITS_SHIM", "PRLIMIT_SHIM"]
