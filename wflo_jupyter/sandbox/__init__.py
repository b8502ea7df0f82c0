"""Docker sandboxes that run cell code isolated from the host.

``docker_runner``: one-shot hardened containers and the shared hardening options;
``session``: the persistent session container with the in-container agent (``agent/``)
and its framed channel; ``values``: the safe formats for values crossing the boundary.
"""

from wflo_jupyter.sandbox.docker_runner import (
    DockerSandbox,
    SandboxRun,
    check_image,
    connect_docker,
    hardened_options,
)
from wflo_jupyter.sandbox.session import (
    ExecResult,
    SandboxLimits,
    SandboxSession,
    reap_orphans,
)
from wflo_jupyter.sandbox.values import UnsafeValue, ValueTransferError

__all__ = [
    "DockerSandbox",
    "ExecResult",
    "SandboxLimits",
    "SandboxRun",
    "SandboxSession",
    "UnsafeValue",
    "ValueTransferError",
    "check_image",
    "connect_docker",
    "hardened_options",
    "reap_orphans",
]
