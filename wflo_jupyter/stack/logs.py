"""The engines' logs, ``logs/<engine>.log``: opened (appending) for each start, read back
since a start (to tell why it failed), and their tail quoted in error messages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO


def open_log(logs: Path, name: str) -> tuple[IO[bytes], Path, int]:
    """``logs/<name>.log`` opened for appending with a start marker written: the file, its
    path and the offset where this start's output begins."""
    path = logs / f"{name}.log"
    fh = path.open("ab")
    fh.write(f"\n--- wflo: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    fh.flush()
    return fh, path, fh.tell()


def since(path: Path, offset: int = 0, limit: int = 1 << 20) -> str:
    """What was written to ``path`` after ``offset`` (at most ``limit`` bytes, the first)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: Path, offset: int = 0, lines: int = 8) -> str:
    """The last ``lines`` non-empty lines of ``path`` written after ``offset``, on one line."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()[-8192:]
    except OSError:
        return "(no log)"
    text = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    # noida-db 0.2.3 warns about a weak glibc symbol on every start; it is harmless noise.
    text = [ln for ln in text if "weak version `GLIBC" not in ln]
    return " | ".join(text[-lines:]) or "(log empty)"
