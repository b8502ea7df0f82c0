"""The stack's state under ``WFLO_HOME``: ``stack.json`` (which engines run, their URL, pid
and extras; written atomically) and ``stack.lock`` (an ``fcntl`` lock that serialises
concurrent ``wflo up``/``down`` calls).

``stack.json`` also keeps, under ``"stopped"``, the engines ``wflo down`` stopped, so the
next ``wflo up`` starts the same engines (Kafka included) at the same addresses."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from wflo_jupyter.stack.engines import ENGINE_ORDER, EngineInfo
from wflo_jupyter.stack.errors import one_line


class StackState:
    """``home/stack.json`` and ``home/stack.lock``."""

    def __init__(self, home: Path, progress: Callable[[str], None]) -> None:
        self.home = home
        self.state_file = home / "stack.json"
        self.lock_file = home / "stack.lock"
        self._progress = progress

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``stack.lock`` exclusively (saying so when another process holds it)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._progress(f"waiting for another wflo up/down on {self.home}...")
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read(self) -> dict[str, EngineInfo]:
        """The engines ``stack.json`` records (none when it is missing or unreadable)."""
        return self._section("engines")

    def read_stopped(self) -> dict[str, EngineInfo]:
        """The engines ``wflo down`` stopped last (their addresses; no pid runs)."""
        return self._section("stopped")

    def _section(self, section: str) -> dict[str, EngineInfo]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._progress(f"ignoring unreadable {self.state_file}: {one_line(exc)}")
            return {}
        engines = raw.get(section, {}) if isinstance(raw, dict) else {}
        if not isinstance(engines, dict):
            return {}
        result: dict[str, EngineInfo] = {}
        for name in ENGINE_ORDER:
            entry = engines.get(name)
            if not isinstance(entry, dict):
                continue
            try:
                result[name] = EngineInfo(
                    name=name,
                    url=str(entry["url"]),
                    pid=int(entry["pid"]),
                    extra={str(k): str(v) for k, v in dict(entry.get("extra", {})).items()},
                )
            except (KeyError, TypeError, ValueError):
                continue
        return result

    def write(
        self, state: dict[str, EngineInfo], stopped: dict[str, EngineInfo] | None = None
    ) -> None:
        """Replace ``stack.json`` atomically with ``state`` (and ``stopped``)."""

        def entries(infos: dict[str, EngineInfo]) -> dict[str, object]:
            return {
                n: {"url": infos[n].url, "pid": infos[n].pid, "extra": infos[n].extra}
                for n in ENGINE_ORDER
                if n in infos
            }

        payload = {"engines": entries(state)}
        if stopped:
            payload["stopped"] = entries(stopped)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stack.json.", dir=self.home)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
