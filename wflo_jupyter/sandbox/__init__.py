"""Docker sandboxes that run cell code isolated from the host.

``docker_engine``: connecting to Docker, the image check and the hardening options every
sandbox container gets; ``session``: the persistent session container with the
in-container agent (``agent/``) and its framed channel; ``values``: the safe formats for
values crossing the boundary.
"""

from wflo_jupyter.sandbox.docker_engine import check_image, connect_docker, hardened_options
from wflo_jupyter.sandbox.session import (
    ExecResult,
    SandboxLimits,
    SandboxSession,
    reap_orphans,
)
from wflo_jupyter.sandbox.values import UnsafeValue, ValueTransferError

__all__ = [
    "ExecResult",
    "SandboxLimits",
    "SandboxSession",
    "UnsafeValue",
    "ValueTransferError",
    "check_image",
    "connect_docker",
    "hardened_options",
    "reap_orphans",
]
