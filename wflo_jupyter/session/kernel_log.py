"""The kernel's log file, ``WFLO_HOME/logs/kernel.log``: every record of the
``wflo_jupyter`` logger (the relay, feeds, watchdogs, the session's background threads)
goes there and nowhere else, so background work never prints into a cell. Several kernels
may share the file: each line names its process."""

from __future__ import annotations

import logging
from pathlib import Path

_FORMAT = "%(asctime)s pid=%(process)d %(threadName)s %(name)s %(levelname)s %(message)s"


class KernelLogHandler(logging.FileHandler):
    """The file handler ``route_to_kernel_log`` installs (recognised by its class)."""


def route_to_kernel_log(home: Path) -> Path:
    """Send the ``wflo_jupyter`` logger's records (INFO and up) to ``home/logs/kernel.log``
    only (idempotent); returns the file's path."""
    path = home / "logs" / "kernel.log"
    logger = logging.getLogger("wflo_jupyter")
    for handler in logger.handlers:
        if isinstance(handler, KernelLogHandler):
            return Path(handler.baseFilename)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = KernelLogHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # ipykernel's root handlers would print into the cell
    return path
