"""``quiet_runtime``: the Temporal runtime of this process, its core's (Rust) log lines
forwarded into Python logging (logger ``temporalio.core``) instead of the process's
stderr, where a kernel's would land in the running cell. The kernel's and the worker's
log files then hold them."""

from __future__ import annotations

import functools
import logging

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

CORE_LOGGER = "temporalio.core"


@functools.cache
def quiet_runtime() -> Runtime:
    """One runtime per process (Temporal's advice: each has its own thread pool)."""
    forwarding = LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER))
    telemetry = TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=forwarding,
        )
    )
    return Runtime(telemetry=telemetry)
