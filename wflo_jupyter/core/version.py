"""The installed package's version, from its metadata (what ``pip`` installed)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "wflo-jupyter"


def package_version() -> str:
    """``wflo-jupyter``'s version; ``0+unknown`` in a source tree never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


__version__ = package_version()

__all__ = ["DISTRIBUTION", "__version__", "package_version"]
