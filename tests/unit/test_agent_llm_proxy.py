"""The agent's loopback LLM proxy, driven by the UNCHANGED official SDKs in cells.

The real agent runs as a plain subprocess (no container); this test plays the host: it
listens on the Unix socket, checks ``ready``, sends ``exec`` frames and answers the
resulting ``llm_request`` frames. Ordinary answers are relayed from the fake provider
server (its real wire formats, chunk by chunk for streams); special models script the
host's behaviour (gated streams, silence, broken streams, a barrier for concurrency).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from tests.fakes.providers import FakeProvider
from wflo_jupyter.gateway.streams import SseEvent, synthesise
from wflo_jupyter.sandbox.agent import AGENT_DIR, protocol
from wflo_jupyter.sandbox.agent.protocol import (
    ChannelClosed,
    Frame,
    ProtocolError,
    encode_frame,
    llm_error_response,
    llm_response,
    llm_response_chunk,
    llm_response_end,
    llm_response_start,
    recv_frame,
)

AGENT = Path(AGENT_DIR) / "agent.py"
HOST_SECRET = "sk-host-secret-do-not-leak"
RELAYED_HEADERS = ("content-type", "retry-after", "retry-after-ms", "x-request-id")


@dataclass
class Cell:
    id: str
    ok: bool
    error: dict[str, Any] | None
    stdout: str
    stderr: str
    displays: list[Frame] = field(default_factory=list)


@dataclass
class Host:
    """The host end of one real agent's channel."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    ready: Frame
    fake: FakeProvider
    workdir: Path
    requests: list[Frame] = field(default_factory=list)
    cancels: list[Frame] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scripts: dict[str, Callable[[Host, Frame], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._output: dict[str, list[str]] = {}
        self._displays: dict[str, list[Frame]] = {}
        self._results: dict[str, Frame] = {}
        self._pool = ThreadPoolExecutor(max_workers=16)
        self._http = httpx.Client(trust_env=False, timeout=30)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # channel --------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        data = encode_frame(frame)
        with self._send_lock:
            self.sock.sendall(data)

    def _read(self) -> None:
        while True:
            try:
                frame = recv_frame(self.sock)
            except (ChannelClosed, ProtocolError, OSError):
                return
            kind = frame["type"]
            with self._cond:
                if kind == "llm_request":
                    self.requests.append(frame)
                    self._pool.submit(self._serve_llm, frame)
                elif kind == "llm_cancel":
                    self.cancels.append(frame)
                elif kind == "stream":
                    self._output.setdefault(str(frame["id"]), []).append(
                        f"{frame['name']}\0{frame['text']}"
                    )
                elif kind == "display":
                    self._displays.setdefault(str(frame["id"]), []).append(frame)
                elif kind == "result":
                    self._results[str(frame["id"])] = frame
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def output(self, cell_id: str, name: str = "stdout") -> str:
        with self._cond:
            parts = self._output.get(cell_id, [])
            return "".join(p.split("\0", 1)[1] for p in parts if p.split("\0", 1)[0] == name)

    def run(self, code: str, timeout_s: float = 60.0) -> Cell:
        return self.result(self.start(code), timeout_s)

    def start(self, code: str) -> str:
        """Send an ``exec`` frame; its cell id (``result`` waits for the cell's end)."""
        cell_id = uuid.uuid4().hex
        self.send(
            {
                "type": "exec",
                "id": cell_id,
                "code": textwrap.dedent(code),
                "inputs": {},
                "outputs": [],
                "output_cap": 10 * 1024 * 1024,
            }
        )
        return cell_id

    def result(self, cell_id: str, timeout_s: float = 60.0) -> Cell:
        assert self.wait_for(lambda: cell_id in self._results, timeout_s), (
            f"no result within {timeout_s} s; stderr so far: {self.output(cell_id, 'stderr')}"
        )
        result = self._results[cell_id]
        return Cell(
            cell_id,
            bool(result["ok"]),
            result["error"],
            self.output(cell_id),
            self.output(cell_id, "stderr"),
            list(self._displays.get(cell_id, [])),
        )

    def requests_for(self, cell_id: str) -> list[Frame]:
        with self._cond:
            return [r for r in self.requests if r["cell"] == cell_id]

    # LLM answers ------------------------------------------------------------------------

    def _serve_llm(self, frame: Frame) -> None:
        try:
            script = self.scripts.get(str(frame["body"].get("model")))
            if script is not None:
                script(self, frame)
            else:
                self.relay(frame)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def relay(self, frame: Frame) -> None:
        """Answer from the fake provider, passing a stream through chunk by chunk."""
        rid, body, method = frame["id"], frame["body"], frame.get("method", "POST")
        with self._http.stream(
            method,
            self.fake.url + frame["path"],
            json=body if method == "POST" else None,
            headers=frame["headers"],
        ) as reply:
            headers = {k: v for k, v in reply.headers.items() if k.lower() in RELAYED_HEADERS}
            if body.get("stream") and reply.status_code == 200:
                self.send(llm_response_start(rid, 200, headers))
                for chunk in reply.iter_bytes():
                    self.send(llm_response_chunk(rid, chunk))
                self.send(llm_response_end(rid))
            else:
                self.send(llm_response(rid, reply.status_code, reply.read(), headers))

    def close(self) -> None:
        with contextlib.suppress(OSError, ProtocolError):
            self.send({"type": "shutdown"})
        try:
            self.proc.wait(5)
        finally:
            kill(self.proc)
            self.sock.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._http.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def start_agent(fake: FakeProvider, extra_env: dict[str, str] | None = None) -> Host:
    """Spawn ``python3 -I agent.py <sock>`` and do the host's half of the handshake."""
    workdir = Path(tempfile.mkdtemp(prefix="wflo-llm-", dir="/tmp"))  # short socket path
    sock_path = workdir / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    token = secrets.token_hex(16)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "WFLO_AGENT_TOKEN": token,
        **(extra_env or {}),
    }
    with (workdir / "agent.log").open("wb") as log:  # the agent's diagnostics
        proc = subprocess.Popen(
            [sys.executable, "-I", str(AGENT), str(sock_path)],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        listener.settimeout(15)
        conn, _ = listener.accept()
        conn.settimeout(15)
        ready = recv_frame(conn, protocol.HANDSHAKE_MAX_FRAME_BYTES)
        conn.settimeout(None)
        assert ready["type"] == "ready"
        assert ready["token"] == token
    except BaseException:
        kill(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        listener.close()
    return Host(proc, conn, ready, fake, workdir)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def host(fake: FakeProvider) -> Iterator[Host]:
    agent = start_agent(fake)
    try:
        yield agent
    finally:
        agent.close()
    assert not agent.errors


@pytest.fixture(scope="module")
def token(host: Host) -> str:
    cell = host.run("import os; print(os.environ['OPENAI_API_KEY'])")
    return cell.stdout.strip()


def post(
    port: int, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request from the test process to the agent's proxy (same loopback here)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body or None, headers=headers, method=method
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=15) as reply:
            return reply.status, dict(reply.headers.items()), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


# ---------------------------------------------------------------------------------------
# environment and handshake


def test_ready_announces_the_proxy_and_cells_see_only_the_session_token(host: Host) -> None:
    port = host.ready["llm_proxy"]["port"]
    assert isinstance(port, int)
    assert port > 0
    cell = host.run(
        """
        import json, os, subprocess, sys
        from openai import OpenAI
        from anthropic import Anthropic
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['ANTHROPIC_API_KEY'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        print(json.dumps({
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENAI", "ANTHROPIC"))},
            "openai_key": OpenAI().api_key,
            "anthropic_key": Anthropic().api_key,
            "child": child,
        }))
        """
    )
    assert cell.ok, cell.error
    seen = json.loads(cell.stdout)
    session_token = seen["env"]["OPENAI_API_KEY"]
    assert session_token.startswith("wflo-sandbox-")
    assert len(session_token) > len("wflo-sandbox-") + 20
    assert seen["env"] == {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
        "OPENAI_API_KEY": session_token,
        "ANTHROPIC_API_KEY": session_token,
    }
    assert seen["openai_key"] == seen["anthropic_key"] == seen["child"] == session_token


def test_the_agent_replaces_provider_keys_it_was_started_with(fake: FakeProvider) -> None:
    agent = start_agent(fake, {"OPENAI_API_KEY": HOST_SECRET, "ANTHROPIC_API_KEY": HOST_SECRET})
    try:
        cell = agent.run(
            "import os; print(os.environ['OPENAI_API_KEY'], os.environ['ANTHROPIC_API_KEY'])"
        )
        assert cell.ok, cell.error
        assert HOST_SECRET not in cell.stdout
        assert cell.stdout.split() == [cell.stdout.split()[0]] * 2
        assert cell.stdout.startswith("wflo-sandbox-")
    finally:
        agent.close()


# ---------------------------------------------------------------------------------------
# the official SDKs, unchanged


def test_openai_chat_reaches_the_cell_and_the_frame_carries_the_call(
    host: Host, token: str
) -> None:
    cell = host.run(
        """
        from openai import OpenAI
        reply = OpenAI().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello proxy"}],
            max_tokens=20,
        )
        print(reply.choices[0].message.content, reply.usage.total_tokens)
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.startswith("echo: hello proxy ")
    (frame,) = host.requests_for(cell.id)
    assert frame["provider"] == "openai"
    assert frame["endpoint"] == "chat"
    assert frame["path"] == "/v1/chat/completions"
    assert frame["body"]["model"] == "gpt-4o-mini"
    assert frame["body"]["messages"] == [{"role": "user", "content": "hello proxy"}]
    assert frame["body"]["max_tokens"] == 20
    assert frame["headers"] == {"content-type": "application/json"}
    assert set(frame) == {
        "type",
        "id",
        "cell",
        "provider",
        "endpoint",
        "method",
        "path",
        "headers",
        "body",
    }
    assert frame["method"] == "POST"
    assert token not in json.dumps(frame)  # the session token never leaves the sandbox


def test_openai_stream_arrives_incrementally(host: Host) -> None:
    """The host holds the rest of the stream until the cell has printed the first delta."""

    def gated(host_: Host, frame: Frame) -> None:
        def events(text: str) -> list[SseEvent]:
            full = {
                "id": "chatcmpl-gated",
                "created": 1,
                "model": "gated",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            }
            return synthesise("chat", full, include_usage=False)

        first, second = events("first"), events(" second")
        rid = frame["id"]
        host_.send(llm_response_start(rid, 200, {"content-type": "text/event-stream"}))
        host_.send(llm_response_chunk(rid, first[0].encode()))
        cell_id = str(frame["cell"])
        if not host_.wait_for(lambda: "delta: first" in host_.output(cell_id), 15):
            host_.send(llm_response_end(rid, "the first delta never reached the cell"))
            return
        for event in (second[0], *first[1:]):
            host_.send(llm_response_chunk(rid, event.encode()))
        host_.send(llm_response_end(rid))

    host.scripts["gated"] = gated
    cell = host.run(
        """
        from openai import OpenAI
        stream = OpenAI().chat.completions.create(
            model="gated", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                print("delta:", chunk.choices[0].delta.content, flush=True)
        print("full:", text)
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == ["delta: first", "delta:  second", "full: first second"]


def test_openai_relayed_streams_responses_and_embeddings(host: Host) -> None:
    cell = host.run(
        """
        from openai import OpenAI
        client = OpenAI()
        parts = []
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage:
                print("usage", chunk.usage.total_tokens > 0)
        print("chat-stream:", "".join(parts), len(parts))
        print("responses:", client.responses.create(model="gpt-4o", input="resp in").output_text)
        events = client.responses.create(model="gpt-4o", input="resp stream", stream=True)
        print("responses-stream:", [e.type for e in events][-1])
        emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        print("embeddings:", len(emb.data), len(emb.data[0].embedding))
        """
    )
    assert cell.ok, cell.error
    lines = cell.stdout.splitlines()
    assert lines[0] == "usage True"
    assert lines[1].startswith("chat-stream: echo: one two three ")
    assert int(lines[1].rsplit(" ", 1)[1]) > 2  # several deltas, not one blob
    assert lines[2:] == [
        "responses: echo: resp in",
        "responses-stream: response.completed",
        "embeddings: 2 8",
    ]
    frames = host.requests_for(cell.id)
    assert [(f["endpoint"], f["path"], bool(f["body"].get("stream"))) for f in frames] == [
        ("chat", "/v1/chat/completions", True),
        ("responses", "/v1/responses", False),
        ("responses", "/v1/responses", True),
        ("embeddings", "/v1/embeddings", False),
    ]


def test_async_openai_calls_run_concurrently(host: Host) -> None:
    cell = host.run(
        """
        import asyncio
        from openai import AsyncOpenAI

        async def main():
            client = AsyncOpenAI()
            async def ask(n):
                reply = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"async {n}"}]
                )
                return reply.choices[0].message.content
            async def stream():
                parts = []
                async for chunk in await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "async stream"}],
                    stream=True,
                ):
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                return "".join(parts)
            return await asyncio.gather(*(ask(n) for n in range(5)), stream())

        print("\\n".join(asyncio.run(main())))
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == [f"echo: async {n}" for n in range(5)] + [
        "echo: async stream"
    ]


def test_anthropic_messages_create_and_stream(host: Host) -> None:
    cell = host.run(
        """
        import anthropic
        client = anthropic.Anthropic()
        reply = client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi claude"}],
        )
        print("create:", reply.content[0].text, reply.usage.output_tokens > 0)
        with client.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=50,
            messages=[{"role": "user", "content": "stream please"}],
        ) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
        print("stream:", "".join(pieces), len(pieces) > 1, final.stop_reason)
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == [
        "create: echo: hi claude True",
        "stream: echo: stream please True end_turn",
    ]
    frames = host.requests_for(cell.id)
    assert [(f["provider"], f["endpoint"], f["path"]) for f in frames] == [
        ("anthropic", "messages", "/v1/messages")
    ] * 2
    assert frames[1]["body"]["stream"] is True
    assert "anthropic-version" in frames[0]["headers"]
    assert set(frames[0]["headers"]) <= set(protocol.LLM_FORWARDED_HEADERS)


def test_ten_threads_are_all_in_flight_at_once_and_each_gets_its_answer(host: Host) -> None:
    barrier = threading.Barrier(10, timeout=20)

    def together(host_: Host, frame: Frame) -> None:
        try:
            barrier.wait()  # all ten requests reached the host before any is answered
        except threading.BrokenBarrierError:
            host_.send(llm_error_response(frame["id"], "openai", 500, "not all in flight"))
            return
        host_.relay(frame)

    host.scripts["barrier"] = together
    cell = host.run(
        """
        import threading
        from openai import OpenAI
        client = OpenAI()
        answers = {}
        def ask(n):
            reply = client.with_options(max_retries=0).chat.completions.create(
                model="barrier", messages=[{"role": "user", "content": f"thread {n}"}]
            )
            answers[n] = reply.choices[0].message.content
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(10)]
        for t in threads: t.start()
        for t in threads: t.join()
        for n in sorted(answers): print(answers[n])
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == [f"echo: thread {n}" for n in range(10)]
    frames = host.requests_for(cell.id)
    assert len({f["id"] for f in frames}) == 10


def test_provider_error_surfaces_as_the_sdks_own_exception(host: Host, fake: FakeProvider) -> None:
    fake.fail_next(429, retry_after=7)

    def anthropic_overloaded(host_: Host, frame: Frame) -> None:
        host_.send(
            llm_error_response(frame["id"], "anthropic", 429, "slow down", {"retry-after": "3"})
        )

    host.scripts["claude-limited"] = anthropic_overloaded
    cell = host.run(
        """
        import anthropic, openai
        try:
            openai.OpenAI(max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        except openai.RateLimitError as exc:
            print("openai", exc.status_code, exc.response.headers["retry-after"], exc.code)
        try:
            anthropic.Anthropic(max_retries=0).messages.create(
                model="claude-limited", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        except anthropic.RateLimitError as exc:
            print("anthropic", exc.status_code, exc.response.headers["retry-after"], exc.body)
        """
    )
    assert cell.ok, cell.error
    lines = cell.stdout.splitlines()
    assert lines[0] == "openai 429 7 rate_limit_exceeded"
    assert lines[1].startswith("anthropic 429 3 {'type': 'error', 'error': {'type': 'rate_limit")


def test_a_stream_ended_with_an_error_raises_in_the_sdk(host: Host) -> None:
    def broken(host_: Host, frame: Frame) -> None:
        rid, endpoint = frame["id"], frame["endpoint"]
        full: dict[str, Any]
        if endpoint == "chat":
            full = {
                "id": "c",
                "model": "m",
                "choices": [{"index": 0, "message": {"content": "partial"}}],
            }
        else:
            full = {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": "partial"}],
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        host_.send(llm_response_start(rid, 200, {"content-type": "text/event-stream"}))
        host_.send(llm_response_chunk(rid, synthesise(endpoint, full)[0].encode()))
        host_.send(llm_response_end(rid, "upstream connection reset"))

    host.scripts["broken"] = broken
    cell = host.run(
        """
        import anthropic, openai
        got = []
        try:
            for chunk in openai.OpenAI(max_retries=0).chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "x"}], stream=True
            ):
                got.append(chunk.choices[0].delta.content)
        except openai.APIError as exc:
            print("openai", got, type(exc).__name__, exc.message)
        try:
            with anthropic.Anthropic(max_retries=0).messages.stream(
                model="broken", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                for _ in stream:
                    pass
        except anthropic.APIStatusError as exc:
            print("anthropic", type(exc).__name__, "upstream connection reset" in str(exc))
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == [
        "openai ['partial'] APIError upstream connection reset",
        "anthropic APIStatusError True",
    ]


# ---------------------------------------------------------------------------------------
# the proxy's own checks: token, body, path, method (answered without the host)


def test_wrong_token_is_refused_with_401_in_the_providers_shape(host: Host) -> None:
    cell = host.run(
        """
        import anthropic, openai
        try:
            openai.OpenAI(api_key="sk-guessed", max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        except openai.AuthenticationError as exc:
            print("openai", exc.status_code, exc.code)
        try:
            anthropic.Anthropic(api_key="sk-ant-guessed", max_retries=0).messages.create(
                model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        except anthropic.AuthenticationError as exc:
            print("anthropic", exc.status_code, exc.body["error"]["type"])
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout.splitlines() == [
        "openai 401 invalid_api_key",
        "anthropic 401 authentication_error",
    ]
    assert host.requests_for(cell.id) == []


def test_the_proxy_accepts_exactly_the_session_token(host: Host, token: str) -> None:
    port = host.ready["llm_proxy"]["port"]
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "raw"}]})
    before = len(host.requests)
    for headers in (
        {},
        {"authorization": "Bearer " + token[:-1]},
        {"authorization": "Bearer " + token + "x"},
        {"x-api-key": HOST_SECRET},
        {"authorization": token},
    ):
        status, _, raw = post(port, "/v1/chat/completions", body.encode(), headers)
        assert status == 401, headers
        assert json.loads(raw)["error"]["code"] == "invalid_api_key"
    assert len(host.requests) == before
    for headers in ({"authorization": f"Bearer {token}"}, {"x-api-key": token}):
        status, _, raw = post(
            port, "/chat/completions", body.encode(), {**headers, "content-type": "x/y"}
        )
        assert status == 200, raw
        assert json.loads(raw)["choices"][0]["message"]["content"] == "echo: raw"
    relayed = host.requests[before:]
    assert [r["path"] for r in relayed] == ["/v1/chat/completions"] * 2  # no /v1: same call
    assert [r["cell"] for r in relayed] == [None, None]  # made between cells
    assert relayed[0]["headers"] == {"content-type": "x/y"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "shape"),
    [
        ("POST", "/v1/chat/completions", b"not json", 400, "openai"),
        ("POST", "/v1/messages", b"[1, 2]", 400, "anthropic"),
        ("POST", "/v1/messages", b"\xff\xfe", 400, "anthropic"),
        ("POST", "/v1/models", b"{}", 404, "openai"),
        ("GET", "/v1/chat/completions", b"", 405, "openai"),
    ],
)
def test_bad_requests_are_refused_without_the_host(
    host: Host, token: str, method: str, path: str, body: bytes, status: int, shape: str
) -> None:
    port = host.ready["llm_proxy"]["port"]
    before = len(host.requests)
    got, headers, raw = post(port, path, body, {"x-api-key": token}, method=method)
    assert got == status
    error = json.loads(raw)
    if shape == "anthropic":
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
    else:
        assert isinstance(error["error"]["message"], str)
    assert headers["x-should-retry"] == "false"
    assert len(host.requests) == before


# ---------------------------------------------------------------------------------------
# the proxy's HTTP/1.1 server, byte by byte


def chat_request(
    token: str, content: str, version: str = "HTTP/1.1", extra: tuple[str, ...] = ()
) -> bytes:
    """One raw ``POST /v1/chat/completions`` (head and body) answered by the fake's echo."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
    head = [
        f"POST /v1/chat/completions {version}",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


@contextlib.contextmanager
def raw_connection(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with sock.makefile("rb") as rfile:
            yield sock, rfile
    finally:
        sock.close()


def read_response(rfile: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, read off a connection that may carry more."""
    status_line = rfile.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = rfile.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def closed_by_proxy(sock: socket.socket, rfile: BinaryIO) -> bool:
    """Does the proxy end the connection now (EOF) rather than wait for another request?"""
    sock.settimeout(3)
    try:
        return rfile.read(1) == b""
    except TimeoutError:
        return False


def echoed(body: bytes) -> str:
    return str(json.loads(body)["choices"][0]["message"]["content"])


def test_pipelined_requests_on_one_connection_are_answered_in_order(host: Host, token: str) -> None:
    def slow(host_: Host, frame: Frame) -> None:
        time.sleep(0.3)  # the first answer is the late one
        host_.relay(frame)

    host.scripts["slow-echo"] = slow
    port = host.ready["llm_proxy"]["port"]
    first = chat_request(token, "pipelined one").replace(b'"gpt-4o-mini"', b'"slow-echo"  ')
    before = len(host.requests)
    with raw_connection(port) as (sock, rfile):
        sock.sendall(first + chat_request(token, "pipelined two"))  # one write, two requests
        answers = [read_response(rfile), read_response(rfile)]
        assert [(status, echoed(body)) for status, _, body in answers] == [
            (200, "echo: pipelined one"),
            (200, "echo: pipelined two"),
        ]
        assert all("connection" not in headers for _, headers, _ in answers)
        sock.sendall(chat_request(token, "and a third"))  # still open: keep-alive
        status, _, body = read_response(rfile)
        assert (status, echoed(body)) == (200, "echo: and a third")
    assert [r["body"]["messages"][0]["content"] for r in host.requests[before:]] == [
        "pipelined one",
        "pipelined two",
        "and a third",
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"POST /v1/chat/completions",  # no version
        b"POST /v1/chat/completions HTTP/2.0",
        b"POST  /v1/chat/completions HTTP/1.1",  # two spaces
        b"POST /v1/chat/completions http/1.1",
        b"PO(ST /v1/chat/completions HTTP/1.1",
        b"POST /v1/chat/\x01completions HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
def test_a_malformed_request_line_is_a_400_and_the_connection_closes(
    host: Host, token: str, line: bytes
) -> None:
    port = host.ready["llm_proxy"]["port"]
    before = len(host.requests)
    with raw_connection(port) as (sock, rfile):
        sock.sendall(line + b"\r\n" + chat_request(token, "never").split(b"\r\n", 1)[1])
        status, headers, body = read_response(rfile)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert headers["x-should-retry"] == "false"
        assert headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error"
        assert "malformed" in error["message"]
        assert closed_by_proxy(sock, rfile)
    assert len(host.requests) == before


@pytest.mark.parametrize(
    "header_lines",
    [
        [f"x-big: {'a' * 70_000}"],  # one huge field
        [f"x-filler-{n}: {'b' * 1000}" for n in range(70)],  # 70 KB of ordinary ones
        [f"x-many-{n}: c" for n in range(101)],  # over 100 fields
    ],
)
def test_an_oversized_header_block_is_a_431_and_the_connection_closes(
    host: Host, token: str, header_lines: list[str]
) -> None:
    port = host.ready["llm_proxy"]["port"]
    before = len(host.requests)
    request = chat_request(token, "never", extra=tuple(header_lines))
    with raw_connection(port) as (sock, rfile):
        sock.sendall(request)
        status, headers, body = read_response(rfile)
        assert status == 431
        assert headers["x-should-retry"] == "false"
        assert "header" in json.loads(body)["error"]["message"]
        assert closed_by_proxy(sock, rfile)
    assert len(host.requests) == before
    # just under the limits is served
    fits = tuple(f"x-filler-{n}: {'b' * 600}" for n in range(95))
    with raw_connection(port) as (sock, rfile):
        sock.sendall(chat_request(token, "fits", extra=fits))
        status, _, body = read_response(rfile)
        assert (status, echoed(body)) == (200, "echo: fits")


@pytest.mark.parametrize(
    ("version", "extra", "stays_open"),
    [
        ("HTTP/1.0", (), False),
        ("HTTP/1.0", ("Connection: keep-alive",), True),
        ("HTTP/1.1", ("Connection: close",), False),
        ("HTTP/1.1", (), True),
    ],
)
def test_connection_persistence_follows_the_version_and_connection_header(
    host: Host, token: str, version: str, extra: tuple[str, ...], stays_open: bool
) -> None:
    port = host.ready["llm_proxy"]["port"]
    with raw_connection(port) as (sock, rfile):
        sock.sendall(chat_request(token, f"{version} {extra}", version, extra))
        status, headers, body = read_response(rfile)
        assert (status, echoed(body)) == (200, f"echo: {version} {extra}")
        if version == "HTTP/1.0" and stays_open:
            assert headers["connection"] == "keep-alive"
        if not stays_open:
            assert closed_by_proxy(sock, rfile)
        else:
            sock.sendall(chat_request(token, "again", version, extra))
            status, _, body = read_response(rfile)
            assert (status, echoed(body)) == (200, "echo: again")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "BREW"])
def test_methods_other_than_post_are_a_405_and_the_connection_closes(
    host: Host, token: str, method: str
) -> None:
    port = host.ready["llm_proxy"]["port"]
    before = len(host.requests)
    with raw_connection(port) as (sock, rfile):
        sock.sendall(chat_request(token, "never").replace(b"POST", method.encode(), 1))
        status, headers, body = read_response(rfile)
        assert status == 405
        assert headers["x-should-retry"] == "false"
        assert json.loads(body)["error"]["message"] == (
            f"{method} is not supported; LLM calls are POST"
        )
        assert closed_by_proxy(sock, rfile)
    assert len(host.requests) == before


# ---------------------------------------------------------------------------------------
# timeouts, cancels, a lost channel


def test_host_silence_is_a_504_and_a_stream_stall_an_error(fake: FakeProvider) -> None:
    agent = start_agent(fake, {"WFLO_AGENT_LLM_TIMEOUT_S": "1"})
    try:

        def silent(host_: Host, frame: Frame) -> None:
            pass

        def stalls(host_: Host, frame: Frame) -> None:
            host_.send(llm_response_start(frame["id"], 200, {"content-type": "text/event-stream"}))

        agent.scripts.update({"silent": silent, "stalls": stalls})
        started = time.monotonic()
        cell = agent.run(
            """
            import openai
            client = openai.OpenAI(max_retries=0)
            try:
                client.chat.completions.create(
                    model="silent", messages=[{"role": "user", "content": "x"}]
                )
            except openai.InternalServerError as exc:
                print("silent", exc.status_code, exc.code)
            try:
                for _ in client.chat.completions.create(
                    model="stalls", messages=[{"role": "user", "content": "x"}], stream=True
                ):
                    pass
            except openai.APIError as exc:
                print("stalls", "sent nothing for 1 s" in exc.message)
            """
        )
        assert cell.ok, cell.error
        assert cell.stdout.splitlines() == ["silent 504 timeout", "stalls True"]
        # the agent's 1 s timeout answered both, not the default 600 s
        assert time.monotonic() - started < 30
        requests = agent.requests_for(cell.id)
        assert agent.wait_for(lambda: len(agent.cancels) == 2)
        assert [c["id"] for c in agent.cancels] == [r["id"] for r in requests]
        # a late answer for a request nobody waits for is dropped; the agent carries on
        agent.send(llm_response(requests[0]["id"], 200, b"{}"))
        assert agent.run("print('still here')").stdout == "still here\n"
    finally:
        agent.close()


def test_a_client_that_leaves_cancels_its_request(host: Host) -> None:
    host.scripts["never"] = lambda host_, frame: None
    before = len(host.cancels)
    cell = host.run(
        """
        import http.client, json, os
        conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["ANTHROPIC_BASE_URL"].rsplit(":", 1)[1]), timeout=0.3)
        conn.request("POST", "/v1/messages", json.dumps({"model": "never"}),
                     {"x-api-key": os.environ["ANTHROPIC_API_KEY"]})
        try:
            conn.getresponse()
        except TimeoutError:
            print("gave up")
        conn.close()
        """
    )
    assert cell.ok, cell.error
    assert cell.stdout == "gave up\n"
    (request,) = host.requests_for(cell.id)
    assert host.wait_for(lambda: len(host.cancels) > before, 30)
    assert host.cancels[-1]["id"] == request["id"]
    assert host.cancels[-1]["reason"] == "the client closed the connection"


def test_pending_requests_fail_with_502_when_the_channel_dies(fake: FakeProvider) -> None:
    agent = start_agent(fake)
    try:
        agent.scripts["hang"] = lambda host_, frame: None
        token = agent.run("import os; print(os.environ['OPENAI_API_KEY'])").stdout.strip()
        port = agent.ready["llm_proxy"]["port"]
        replies: list[tuple[int, dict[str, str], bytes]] = []
        body = json.dumps({"model": "hang", "messages": []}).encode()
        caller = threading.Thread(
            target=lambda: replies.append(
                post(port, "/v1/chat/completions", body, {"authorization": f"Bearer {token}"})
            )
        )
        caller.start()
        assert agent.wait_for(lambda: len(agent.requests) == 1)
        agent.sock.shutdown(socket.SHUT_RDWR)  # the host goes away
        caller.join(10)
        assert agent.proc.wait(10) == 0
        ((status, headers, raw),) = replies
        assert status == 502
        assert "host" in json.loads(raw)["error"]["message"]
        assert headers["x-should-retry"] == "false"
    finally:
        agent.close()


# ---------------------------------------------------------------------------------------
# the free routes: count_tokens and the models list / retrieve


def test_free_routes_reach_the_host_as_frames_and_hostile_ones_do_not(
    host: Host, token: str
) -> None:
    port = host.ready["llm_proxy"]["port"]
    bearer = {"authorization": f"Bearer {token}"}
    anthropic = {"x-api-key": token, "anthropic-version": "2023-06-01"}
    before = len(host.requests)
    status, _, raw = post(port, "/v1/models/gpt-4o-mini", b"", bearer, method="GET")
    assert (status, json.loads(raw)["id"]) == (200, "gpt-4o-mini")
    status, _, raw = post(port, "/v1/models?limit=3&x=y", b"", anthropic, method="GET")
    assert status == 200 and json.loads(raw)["data"][0]["type"] == "model"
    body = json.dumps({"model": "claude-3-haiku", "messages": []}).encode()
    status, _, raw = post(port, "/v1/messages/count_tokens", body, anthropic)
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    frames = host.requests[before:]
    assert [(f["method"], f["provider"], f["endpoint"], f["path"], f["body"]) for f in frames] == [
        ("GET", "openai", "models", "/v1/models/gpt-4o-mini", {}),
        ("GET", "anthropic", "models", "/v1/models?limit=3", {}),
        ("POST", "anthropic", "count_tokens", "/v1/messages/count_tokens", json.loads(body)),
    ]
    for path, headers, expected in [
        ("/v1/models/%2e%2e", bearer, 400),
        ("/v1/models/../chat/completions", bearer, 400),
        ("/v1/models/" + "m" * 200, bearer, 400),
        ("/v1/models?limit=0", anthropic, 400),
        ("/v1/models", {"authorization": "Bearer wrong"}, 401),
        ("/v1/files", bearer, 404),
    ]:
        status, reply_headers, raw = post(port, path, b"", headers, method="GET")
        assert status == expected, path
        assert reply_headers["x-should-retry"] == "false"
        if headers is anthropic:
            assert json.loads(raw)["type"] == "error"
        else:
            assert isinstance(json.loads(raw)["error"]["message"], str)
    assert len(host.requests) == before + 3
