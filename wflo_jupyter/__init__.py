"""wflo-jupyter: run notebook cells as budgeted, durable workflow steps in a sandbox.

``%load_ext wflo_jupyter`` registers the ``%%wflo`` cell magic and the ``%wflo`` line
magics; jupyter_server finds the server extension (``wflo_jupyter.server``) through
``_jupyter_server_extension_points``. This module only owns those entry points;
everything else lives in the sub-packages described in ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wflo_jupyter.core.version import __version__

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell


__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter server extension of this package (its handlers under ``/wflo/api/``)."""
    return [{"module": "wflo_jupyter.server"}]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register the wflo magics on ``ipython`` (called by ``%load_ext``)."""
    from wflo_jupyter.jupyter.extension import load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Stop the session's threads and close its connections (``%unload_ext``)."""
    from wflo_jupyter.jupyter.extension import unload

    unload(ipython)
