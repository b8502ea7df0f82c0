"""Sandboxes that run cell code isolated from the host.

``session``: ``SandboxSession``, the persistent per-kernel sandbox with the agent
(``agent/``) and its framed channel, built from ``lifecycle``, ``cell_run``, ``outcomes``,
``handshake``, ``channel`` and ``llm_relay``; the isolation backends behind ``backend``:
``docker_backend`` (with ``docker_engine``: connection and hardening options), ``bwrap``
and ``isolation`` (which to use; the unisolated one, on ``processes``); ``orphans``:
removing what dead kernels left; ``values``: the safe formats for values crossing the
boundary.
"""

from wflo_jupyter.sandbox.docker_engine import check_image, connect_docker, hardened_options
from wflo_jupyter.sandbox.orphans import reap_orphans
from wflo_jupyter.sandbox.session import SandboxSession
from wflo_jupyter.sandbox.types import ExecResult, SandboxLimits
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
