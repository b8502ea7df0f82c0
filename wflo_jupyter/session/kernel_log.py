"""The kernel's log file, ``WFLO_HOME/logs/kernel.log``: every record of the
``wflo_jupyter`` logger (the relay, feeds, watchdogs, the session's background threads)
goes there and nowhere else, so background work never prints into a cell. So do the
records of the libraries that work in the background for it (``LIBRARY_LOGGERS``: the
Temporal worker's activity failures and its Rust core's lines, forwarded by
``quiet_runtime``; SQLAlchemy's pool), which would otherwise reach the running cell's
stderr through Python's last-resort handler. Several kernels may share the file: each
line names its process. A ``wflo worker`` routes the same loggers to ``worker.log``."""

from __future__ import annotations

import logging
from pathlib import Path

_FORMAT = "%(asctime)s pid=%(process)d %(threadName)s %(name)s %(levelname)s %(message)s"
LIBRARY_LOGGERS = ("temporalio", "sqlalchemy")  # at their own levels (WARNING by default)


class KernelLogHandler(logging.FileHandler):
    """The file handler ``route_to_kernel_log`` installs (recognised by its class)."""


def route_to_kernel_log(home: Path, file_name: str = "kernel.log") -> Path:
    """Send the ``wflo_jupyter`` logger's records (INFO and up) and the background
    libraries' to ``home/logs/<file_name>`` only (idempotent); returns the file's path."""
    logger = logging.getLogger("wflo_jupyter")
    for handler in logger.handlers:
        if isinstance(handler, KernelLogHandler):
            return Path(handler.baseFilename)
    path = home / "logs" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = KernelLogHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.setLevel(logging.INFO)
    for routed in (logger, *map(logging.getLogger, LIBRARY_LOGGERS)):
        routed.addHandler(handler)
        routed.propagate = False  # ipykernel's root handlers would print into the cell
    return path
