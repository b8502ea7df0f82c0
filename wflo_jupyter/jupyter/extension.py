"""``%load_ext`` / ``%unload_ext`` hooks: register the magics, clean up on unload."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.jupyter.magics import WfloMagics

_MAGICS_ATTR = "_wflo_magics"


def _show_wflo_error(
    shell: InteractiveShell,
    etype: type[BaseException],
    value: BaseException,
    tb: object,
    tb_offset: int | None = None,
) -> None:
    """Show wflo errors as one line (the sandbox traceback was already printed)."""
    lines = shell.InteractiveTB.get_exception_only(etype, value)
    shell._showtraceback(etype, value, ["".join(lines).rstrip("\n")])


def load(shell: InteractiveShell) -> None:
    if getattr(shell, _MAGICS_ATTR, None) is not None:
        return
    magics = WfloMagics(shell=shell)
    shell.register_magics(magics)
    shell.set_custom_exc((WfloError,), _show_wflo_error)
    setattr(shell, _MAGICS_ATTR, magics)
    magics.prewarm()


def unload(shell: InteractiveShell) -> None:
    magics: WfloMagics | None = getattr(shell, _MAGICS_ATTR, None)
    if magics is None:
        return
    magics.close()
    shell.set_custom_exc((), None)
    shell.magics_manager.magics["line"].pop("wflo", None)
    shell.magics_manager.magics["cell"].pop("wflo", None)
    setattr(shell, _MAGICS_ATTR, None)
