"""The kernel's log file, ``WFLO_HOME/logs/kernel.log``: every record of the
``wflo_jupyter`` logger (the relay, feeds, watchdogs, the session's background threads)
and of ``temporalio`` (the SDK's worker warnings, and the Rust core's lines, forwarded by
``quiet_runtime``) goes there and nowhere else, so background work never prints into a
cell. Several kernels may share the file: each line names its process. A ``wflo worker``
routes the same loggers to ``worker.log``."""

from __future__ import annotations

import logging
from pathlib import Path

_FORMAT = "%(asctime)s pid=%(process)d %(threadName)s %(name)s %(levelname)s %(message)s"
ROUTED_LOGGERS = ("wflo_jupyter", "temporalio")


class KernelLogHandler(logging.FileHandler):
    """The file handler ``route_to_kernel_log`` installs (recognised by its class)."""


def route_to_kernel_log(home: Path, file_name: str = "kernel.log") -> Path:
    """Send the ``ROUTED_LOGGERS``' records (INFO and up for ours, WARNING and up for
    Temporal's) to ``home/logs/<file_name>`` only (idempotent); returns the file's path."""
    for handler in logging.getLogger(ROUTED_LOGGERS[0]).handlers:
        if isinstance(handler, KernelLogHandler):
            return Path(handler.baseFilename)
    path = home / "logs" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = KernelLogHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    for name, level in zip(ROUTED_LOGGERS, (logging.INFO, logging.WARNING), strict=True):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # ipykernel's root handlers would print into the cell
    return path
