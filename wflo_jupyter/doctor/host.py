"""The doctor's look at the host: the Python, the LLM SDKs (the versions cells get, pinned
by the image's recipe, and the host's own), the tokenizer encodings that load offline,
and the free disk space under ``WFLO_HOME``."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

from wflo_jupyter.core.doctor import Finding
from wflo_jupyter.core.doctor_rules import (
    ENCODINGS,
    disk_finding,
    python_finding,
    sdk_finding,
    tokenizer_finding,
)
from wflo_jupyter.ledger.tokens import TokenCounter
from wflo_jupyter.runtime import recipe

SDKS = ("openai", "anthropic")


def host_findings(home: Path) -> list[Finding]:
    findings = [python_finding(tuple(sys.version_info[:3]), sys.executable)]
    pins = recipe.pinned(recipe.recipe_dir())
    for name in SDKS:
        findings.append(sdk_finding(name, pins.get(name), _installed(name)))
    counter = TokenCounter(home)
    findings.append(
        tokenizer_finding(counter.offline_encodings(ENCODINGS), str(counter.encodings_dir))
    )
    findings.append(disk_finding(str(home), _free_bytes(home)))
    return findings


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem ``path`` is (or will be) on."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


__all__ = ["host_findings"]
