"""The kernel's session: ``WfloSession`` (one per kernel: engines, steps, and the
notebook layer's only door into the rest of the package) and ``KernelSandboxes`` (the
kernel's sandbox containers); ``route_to_kernel_log`` (the kernel's log file)."""

from __future__ import annotations

from wflo_jupyter.session.kernel import NO_LIMIT_MICROS, WfloSession, load_settings
from wflo_jupyter.session.kernel_log import route_to_kernel_log
from wflo_jupyter.session.sandboxes import KernelSandboxes

__all__ = [
    "NO_LIMIT_MICROS",
    "KernelSandboxes",
    "WfloSession",
    "load_settings",
    "route_to_kernel_log",
]
