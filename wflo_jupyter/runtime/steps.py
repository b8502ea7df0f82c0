"""What the image build's steps share: ``BuildError`` (one line), and running a long
command with its output in a log file and a progress line every ten seconds."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from wflo_jupyter.core.errors import WfloError

Progress = Callable[[str], None]
HEARTBEAT_S = 10.0


class BuildError(WfloError):
    """The runtime image could not be built (one line: what failed and what to do)."""


def run_logged(
    argv: Sequence[str],
    label: str,
    progress: Progress,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv``, its output in a temporary log; every ``HEARTBEAT_S`` seconds say
    ``label: N s — <its last line>``. Returns the log's text; ``BuildError`` with the
    log's last lines when it fails."""
    with tempfile.NamedTemporaryFile("w+", prefix="wflo-build-", suffix=".log") as log:
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )
        except OSError as exc:
            raise BuildError(f"{label}: cannot run {argv[0]} ({exc.strerror})") from None
        next_beat = started + HEARTBEAT_S
        while process.poll() is None:
            time.sleep(0.5)
            if time.monotonic() >= next_beat and process.poll() is None:
                last = _last_line(Path(log.name))
                progress(
                    f"  {label}: {time.monotonic() - started:.0f} s"
                    + (f" — {last}" if last else "")
                )
                next_beat += HEARTBEAT_S
        text = Path(log.name).read_text(errors="replace")
        if process.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-25:])
            raise BuildError(f"{label} failed (exit {process.returncode}); its last lines:\n{tail}")
        progress(f"  {label}: done in {time.monotonic() - started:.0f} s")
        return text


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""


__all__ = ["BuildError", "Progress", "run_logged"]
