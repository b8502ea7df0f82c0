"""The sandbox agent: stdlib-only code that runs INSIDE the session container.

This folder is bind-mounted read-only into every sandbox container (``/opt/wflo-agent``)
and started there as ``python3 -I /opt/wflo-agent/agent.py /run/wflo/<socket>``; it is
never baked into runtime images. Nothing here may import ``wflo_jupyter`` or anything
outside the standard library at run time, because the container has neither.

- ``protocol.py`` owns the framed channel (length-prefixed JSON frames) and is used by
  both sides: the host imports it as ``wflo_jupyter.sandbox.agent.protocol``, the agent
  loads it by file path.
- ``agent.py`` is the in-container entry point; its parts, one file each (the kernel,
  output capture, rich display, ``--out`` values, the LLM proxy, ...), are listed in its
  docstring. Inside the container they are loaded by path (``loader.py``), since there
  is no package there; on the host they are ordinary modules of this package.
"""

from __future__ import annotations

from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent
"""The host directory to bind-mount read-only into the container."""

__all__ = ["AGENT_DIR"]
