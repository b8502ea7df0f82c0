"""Loading another migration's module, for migrations that edit or restore the SQL
function texts an earlier revision created (``migrations/versions`` is not a package:
Alembic loads those files by path, and so does this)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"


def migration_module(filename: str) -> ModuleType:
    """The module of migration file ``filename`` (e.g. ``0003_lean_reservations.py``)."""
    path = VERSIONS / filename
    spec = importlib.util.spec_from_file_location(f"wflo_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load migration {filename}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def or_replace(function_text: str) -> str:
    """``CREATE FUNCTION`` text as ``CREATE OR REPLACE FUNCTION``."""
    return function_text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
