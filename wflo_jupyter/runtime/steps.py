"""What the image builds' steps share: ``BuildError`` (one line), running a long command
with its output in a log file and a progress line every ten seconds, one builder at a time
on this machine (``build_lock``), and ``docker build`` offline with a line per step."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from wflo_jupyter.core.errors import WfloError

Progress = Callable[[str], None]
HEARTBEAT_S = 10.0
LOCK_WAIT_S = 600.0
BUILD_TIMEOUT_S = 3600


class BuildError(WfloError):
    """The runtime image could not be built (one line: what failed and what to do)."""


class CommandFailed(BuildError):
    """A command of the build exited non-zero; ``output`` is its whole log."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


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
            raise CommandFailed(
                f"{label} failed (exit {process.returncode}); its last lines:\n{tail}", text
            )
        progress(f"  {label}: done in {time.monotonic() - started:.0f} s")
        return text


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""


@contextlib.contextmanager
def build_lock(progress: Progress) -> Iterator[None]:
    """One builder at a time on this machine; whoever waited re-checks afterwards."""
    path = Path(tempfile.gettempdir()) / "wflo-build-runtime-image.lock"
    with path.open("a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"another image build is still running (lock {path})"
                    ) from None
                if not said:
                    progress("waiting for another image build to finish...")
                    said = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def docker_build(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    buildargs: Mapping[str, str],
    labels: Mapping[str, str],
    progress: Progress,
) -> None:
    """``docker build --network none`` of ``context`` as ``tag``; one progress line per
    Dockerfile step (the long ones show as they start). The tag moves only on success."""
    progress(f"building {tag} from {buildargs.get('BASE', 'its base')}...")
    started = time.monotonic()
    try:
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            buildargs=dict(buildargs),
            labels=dict(labels),
            network_mode="none",
            rm=True,
            forcerm=True,
            decode=True,
            timeout=BUILD_TIMEOUT_S,
        ):
            if "error" in chunk:
                raise BuildError(f"docker build of {tag} failed: {str(chunk['error']).strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                progress(f"  docker build: {line[:100]}")
    except (DockerException, requests.RequestException) as exc:
        raise BuildError(f"docker build of {tag} failed: {exc}") from None
    progress(f"  docker build: done in {time.monotonic() - started:.0f} s")


__all__ = [
    "BuildError",
    "CommandFailed",
    "Progress",
    "build_lock",
    "docker_build",
    "run_logged",
]
