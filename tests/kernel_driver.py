"""A real ipykernel driven over ZMQ with jupyter_client, for end-to-end tests."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class CellRun:
    """The outputs of one executed cell."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    reply: dict[str, Any] = field(default_factory=dict)  # execute_reply (ename of a UsageError)
    data: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)  # of each entry of data
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # input() prompts the cell showed

    @property
    def error_line(self) -> str:
        return f"{self.error['ename']}: {self.error['evalue']}" if self.error else ""

    @property
    def notices(self) -> str:
        """wflo's notices (display data whose text starts ``[wflo] ``), one a line."""
        texts = (str(d.get("text/plain", "")) for d in self.data)
        return "".join(f"{t}\n" for t in texts if t.startswith("[wflo] "))

    @property
    def text(self) -> str:
        """The ``text/plain`` of every output (display data and results), one after another."""
        return "\n".join(str(d.get("text/plain", "")) for d in self.data)


class Kernel:
    """Start a python3 kernel with an environment; run cells; shut down."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.wflo_loaded = False
        self._shut_down = False
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env={**os.environ, **(env or {})})
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(
        self, code: str, timeout: float = 180, answer: Callable[[str], str] | None = None
    ) -> CellRun:
        """Run ``code``; with ``answer``, the cell may ask (``allow_stdin``): each input
        request is answered with ``answer(prompt)``."""
        return self.collect(self.submit(code, stdin=answer is not None), timeout, answer)

    def submit(self, code: str, stdin: bool = False) -> str:
        """Start running ``code``; ``collect`` its outputs later."""
        return str(self.client.execute(code, allow_stdin=stdin))

    def collect(
        self, msg_id: str, timeout: float = 180, answer: Callable[[str], str] | None = None
    ) -> CellRun:
        code = msg_id
        result = CellRun(status="unknown")
        deadline = time.monotonic() + timeout
        while True:
            if answer is not None:
                self._answer_input(result, answer)
            try:
                wait = 0.1 if answer is not None else timeout
                msg = self.client.get_iopub_msg(timeout=wait)
            except queue.Empty:
                if answer is not None and time.monotonic() < deadline:
                    continue
                raise TimeoutError(f"cell did not finish in {timeout} s: {code[:60]!r}") from None
            deadline = time.monotonic() + timeout
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                result.timeline.append((time.monotonic(), content["name"], content["text"]))
                if content["name"] == "stdout":
                    result.stdout += content["text"]
                else:
                    result.stderr += content["text"]
            elif kind == "error":
                result.error = content
            elif kind in ("execute_result", "display_data"):
                result.data.append(content["data"])
                result.metadata.append(content.get("metadata") or {})
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:  # the execute_reply of THIS request (skip any stale reply)
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        result.status = reply["content"]["status"]
        result.reply = reply["content"]
        return result

    def interrupt_once(self, msg_id: str, marker: str, timeout: float = 120) -> float:
        """Wait until the running request ``msg_id`` printed ``marker``, then interrupt
        the kernel (the notebook's stop button); the ``time.monotonic()`` of the interrupt.
        ``collect`` the request afterwards (output before the marker is not kept)."""
        seen = ""
        deadline = time.monotonic() + timeout
        while marker not in seen:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                seen += msg["content"]["text"]
        interrupted = time.monotonic()
        self.manager.interrupt_kernel()
        return interrupted

    def _answer_input(self, result: CellRun, answer: Callable[[str], str]) -> None:
        try:
            request = self.client.get_stdin_msg(timeout=0)
        except queue.Empty:
            return
        if request["msg_type"] == "input_request":
            prompt = request["content"]["prompt"]
            result.prompts.append(prompt)
            self.client.input(answer(prompt))

    def alive(self) -> bool:
        return self.manager.is_alive() and self.run("print(1 + 1)", timeout=60).stdout == "2\n"

    def load_wflo(self) -> None:
        """``%load_ext wflo_jupyter``, which must succeed; ``close`` unloads it."""
        loaded = self.run("%load_ext wflo_jupyter")
        assert loaded.status == "ok", loaded.error
        self.wflo_loaded = True

    def wflo_session_id(self) -> str:
        """The id of the loaded extension's session."""
        run = self.run("print(get_ipython().find_magic('wflo').__self__.session.session_id)")
        return run.stdout.strip()

    def close(self) -> None:
        """``%unload_ext wflo_jupyter`` when ``load_wflo`` loaded it, then shut down; a
        kernel already shut down is left as it is."""
        if self.wflo_loaded and not self._shut_down:
            self.run("%unload_ext wflo_jupyter")
        self.shutdown()

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


@contextmanager
def loaded_kernel(env: dict[str, str] | None = None) -> Iterator[Kernel]:
    """A kernel with ``%load_ext wflo_jupyter`` done; unloaded and shut down after."""
    kernel = Kernel(env=env)
    try:
        kernel.load_wflo()
        yield kernel
        kernel.close()
    finally:
        kernel.shutdown()
