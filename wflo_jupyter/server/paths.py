"""Checking what a request names: a notebook's contents path and a row limit, and the
keys under which the ledger may have recorded that notebook.

The lab frontend knows a notebook by its contents path, relative to the server's root
(``reports/q3.ipynb``). A kernel records the path it is given in ``JPY_SESSION_NAME``:
jupyter_server's ``SessionManager.get_kernel_env`` sets it to the absolute file path
(``<root_dir>/reports/q3.ipynb``) whenever the session has a name, which JupyterLab always
sends; ``WFLO_NOTEBOOK_PATH`` or a session without a name gives whatever was set. So a
path is looked up under both spellings: as given, and joined to each root directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

MAX_PATH = 1024
"""Longest notebook path accepted (characters)."""
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class BadRequest(ValueError):
    """A malformed request argument; its message is one line for the client."""


def check_notebook_path(raw: str | None) -> str:
    """``raw`` when it is a relative contents path without ``.``/``..``/empty segments,
    control characters or a drive, at most ``MAX_PATH`` long; else ``BadRequest``."""
    if raw is None or raw == "":
        raise BadRequest("wflo: the notebook path is missing (?path=)")
    if len(raw) > MAX_PATH:
        raise BadRequest(f"wflo: the notebook path is longer than {MAX_PATH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise BadRequest("wflo: the notebook path contains a control character")
    if raw.startswith(("/", "\\", "~")) or (len(raw) > 1 and raw[1] == ":"):
        raise BadRequest("wflo: the notebook path must be relative to the server's root")
    if "\\" in raw:
        raise BadRequest("wflo: the notebook path must use / between folders")
    if any(part in ("", ".", "..") for part in raw.split("/")):
        raise BadRequest("wflo: the notebook path has an empty, '.' or '..' segment")
    return raw


def check_limit(raw: str | None) -> int:
    """``raw`` as an integer from 1 to ``MAX_LIMIT`` (``DEFAULT_LIMIT`` when absent)."""
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise BadRequest(f"wflo: limit must be a whole number from 1 to {MAX_LIMIT}")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"wflo: limit must be a whole number from 1 to {MAX_LIMIT}")
    return value


def check_step_id(raw: str | None) -> str:
    """``raw`` when it is a step id (a UUID, as the ledger writes them); else ``BadRequest``."""
    if raw is None or raw == "":
        raise BadRequest("wflo: the step id is missing (?step=)")
    try:
        return str(uuid.UUID(raw)) if len(raw) == 36 else _bad_step()
    except ValueError:
        return _bad_step()


def _bad_step() -> str:
    raise BadRequest("wflo: the step id is not a step id (a UUID)")


def ledger_keys(path: str, roots: Iterable[str]) -> tuple[str, ...]:
    """The spellings under which kernels may have recorded ``path``: as given, then
    joined to each server root directory (absolute, normalised), without repeats."""
    keys = [path]
    for root in roots:
        if root:
            absolute = os.path.normpath(os.path.join(os.path.abspath(root), path))
            if absolute not in keys:
                keys.append(absolute)
    return tuple(keys)
