"""``%load_ext`` / ``%unload_ext`` hooks: route the package's log to the kernel's log
file, register the magics, clean up on unload and when the kernel's interpreter exits (a
shutdown request, the end of a notebook run), so no sandbox outlives its kernel and the
relay drains the outbox."""

from __future__ import annotations

import atexit
import logging

from IPython.core.interactiveshell import InteractiveShell

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.jupyter.magics import WfloMagics
from wflo_jupyter.session import load_settings, route_to_kernel_log

_MAGICS_ATTR = "_wflo_magics"
_EXIT_HOOK_ATTR = "_wflo_exit_hook"
log = logging.getLogger(__name__)


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
    try:  # before anything starts a background thread
        route_to_kernel_log(load_settings().home)
    except (WfloError, OSError) as exc:  # bad settings are reported on the first cell
        log.debug("no kernel log: %s", exc)
    magics = WfloMagics(shell=shell)
    shell.register_magics(magics)
    shell.set_custom_exc((WfloError,), _show_wflo_error)
    setattr(shell, _MAGICS_ATTR, magics)

    def close_at_exit() -> None:
        try:
            magics.close()
        except Exception:  # at exit: log, never print a traceback into the terminal
            log.exception("closing the wflo session at interpreter exit failed")

    atexit.register(close_at_exit)
    setattr(shell, _EXIT_HOOK_ATTR, close_at_exit)
    magics.prewarm()


def unload(shell: InteractiveShell) -> None:
    magics: WfloMagics | None = getattr(shell, _MAGICS_ATTR, None)
    if magics is None:
        return
    hook = getattr(shell, _EXIT_HOOK_ATTR, None)
    if hook is not None:
        atexit.unregister(hook)
        setattr(shell, _EXIT_HOOK_ATTR, None)
    magics.close()
    shell.set_custom_exc((), None)
    shell.magics_manager.magics["line"].pop("wflo", None)
    shell.magics_manager.magics["cell"].pop("wflo", None)
    setattr(shell, _MAGICS_ATTR, None)
