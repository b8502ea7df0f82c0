"""Engines of the local stack SIGKILLed under a notebook and started again with ``wflo up``
(``LocalStack.up``): they come back at the addresses they had (or at new ones, recorded,
when a port was taken), and the same kernel works again without a restart. While Temporal
is away a cell is refused within seconds in one line; while Redis is away LLM calls are
answered and recorded, only not cached. One notice when an engine goes, one when it is back.

The stack is this module's own (its own ``WFLO_HOME``, all four engines): the suite's
shared engines are never killed. The kernel uses its Temporal and Redis (their addresses
read from its ``stack.json``, as a local-stack user's kernel does), the suite's PostgreSQL
and Kafka.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.fakes.providers import FakeProvider
from tests.helpers import wait_until
from tests.integration.test_cache import _key, _response
from tests.kernel_driver import CellRun, Kernel, loaded_kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.cache.llm_cache import LlmCache
from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.stack.engines import EngineInfo
from wflo_jupyter.stack.health import health
from wflo_jupyter.stack.local import LocalStack

pytestmark = [*LLM_KERNEL, pytest.mark.kafka]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOISE = ("Traceback", "WARN", "RPCError", "panicked")


class PrivateStack:
    """A local stack of this module's own, whose engines the tests kill."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.stack = LocalStack(home)
        self.stack.up(with_kafka=True)

    def info(self, name: str) -> EngineInfo:
        return self.stack.engines()[name]

    def kill(self, name: str) -> EngineInfo:
        """SIGKILL engine ``name`` (its whole process group); returns what it was."""
        info = self.info(name)
        os.killpg(info.pid, signal.SIGKILL)
        wait_until(lambda: name not in self.stack.engines(), 10, what=f"{name} to die")
        wait_until(lambda: health(info, timeout=0.5) is not None, 10, what=f"{name} silent")
        return info

    def recorded(self) -> dict[str, str]:
        """name -> url of the running engines, as ``stack.json`` says."""
        engines = json.loads((self.home / "stack.json").read_text())["engines"]
        return {name: str(entry["url"]) for name, entry in engines.items()}


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    stack = PrivateStack(tmp_path_factory.mktemp("restart-home"))
    try:
        yield stack
    finally:
        stack.stack.down()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel(
    stack_env: dict[str, str], runtime_image: str, private: PrivateStack, fake: FakeProvider
) -> Iterator[Kernel]:
    env = {
        "WFLO_HOME": str(private.home),
        "WFLO_TEMPORAL_ADDRESS": "",  # unset: the local stack's, read from stack.json
        "WFLO_TEMPORAL_UI": "",
        "WFLO_REDIS_URL": "",
        "OPENAI_API_KEY": "sk-host-secret",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
    }
    with loaded_kernel(env) as started:
        yield started


def _clean(run: CellRun) -> None:
    """No traceback, ANSI escape or library log line in what the cell printed."""
    printed = run.stdout + run.stderr + run.text + run.error_line
    for noise in NOISE:
        assert noise not in printed, printed
    assert not ANSI.search(printed), printed
    assert run.stderr == "", run.stderr


def _notices(run: CellRun, engine: str) -> list[str]:
    return [n for n in run.notices.splitlines() if n.startswith(f"[wflo] {engine}")]


def _refusal(address: str) -> str:
    return (
        f"EngineUnavailable: Temporal at {address} is unreachable: cells are refused until "
        "it is back; start it with `wflo up`, or point WFLO_TEMPORAL_ADDRESS at the "
        "configured address"
    )


def test_temporal_killed_then_up_same_address_same_kernel(
    private: PrivateStack, kernel: Kernel
) -> None:
    assert kernel.run("%%wflo\nprint('before')").stdout == "before\n"
    killed = private.kill("temporal")
    refused = []
    for _ in range(2):
        began = time.monotonic()
        refused.append(kernel.run("%%wflo --name while-down\nprint('ran')", timeout=60))
        assert time.monotonic() - began < 5  # fails fast, no ten-second retry loop
    for run in refused:
        assert run.status == "error" and run.error is not None
        assert run.error_line == _refusal(killed.url)  # one line: Temporal, address, remedy
        assert [ANSI.sub("", t) for t in run.error["traceback"]] == [run.error_line]
        assert run.stdout == "" and run.notices == ""  # the refusal is the notice
        _clean(run)

    private.stack.up()
    assert private.info("temporal").url == killed.url  # back where it was
    assert private.info("temporal").extra["ui"] == killed.extra["ui"]
    after = kernel.run("%%wflo --name after\nprint('after')", timeout=120)
    assert after.status == "ok", after.error
    assert after.stdout == "after\n"
    assert re.fullmatch(
        rf"\[wflo\] Temporal at {re.escape(killed.url)} is back after \d+ s: cells run again\n",
        after.notices,
    ), after.notices
    _clean(after)
    again = kernel.run("%%wflo\nprint('again')")
    assert again.stdout == "again\n" and again.notices == ""


def test_temporal_port_taken_moves_and_the_kernel_follows(
    private: PrivateStack, kernel: Kernel
) -> None:
    assert kernel.run("%%wflo\nprint('before')").status == "ok"
    killed = private.kill("temporal")
    host, port = killed.url.rsplit(":", 1)
    squatter = _squat(host, int(port))
    try:
        private.stack.up()
        moved = private.info("temporal").url
        assert moved != killed.url
        assert private.recorded()["temporal"] == moved  # written for the kernels to read
        run = kernel.run("%%wflo --name moved\nprint('moved')", timeout=120)
    finally:
        squatter.close()
    assert run.status == "ok", run.error
    assert run.stdout == "moved\n"
    _clean(run)
    status = kernel.run("%wflo status").data[-1]["text/plain"]
    assert moved in status and killed.url not in status


def _llm_cell(name: str, *prompts: str) -> str:
    asks = "".join(f"print(ask({p!r}))\n" for p in prompts)
    return (
        f"%%wflo --name {name}\n"
        "from openai import OpenAI\n"
        "client = OpenAI()\n"
        "def ask(words):\n"
        "    return client.chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
        "        messages=[{'role': 'user', 'content': words}]).choices[0].message.content\n"
        f"{asks}"
    )


def _calls(session_id: str, name: str) -> list[bool]:
    """The cached flag of each LLM call recorded for the session's step ``name``."""
    ledger = Ledger.connect(os.environ["WFLO_DATABASE_URL"], migrate=False)
    try:
        step = next(s for s in ledger.steps(session_id) if s.name == name)
        with ledger.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT cached FROM llm_calls WHERE step_id = :s ORDER BY created_at"),
                {"s": step.id},
            ).scalars()
            return [bool(r) for r in rows]
    finally:
        ledger.close()


def test_redis_killed_calls_answered_uncached_then_cached_again(
    private: PrivateStack, kernel: Kernel, fake: FakeProvider
) -> None:
    marker = uuid.uuid4().hex[:8]
    session_id = kernel.wflo_session_id()
    killed = private.kill("redis")
    address = killed.url.removeprefix("redis://")
    before = len(fake.requests)
    down = kernel.run(_llm_cell("redis-down", f"down {marker}", f"down {marker}"))
    assert down.status == "ok", down.error
    assert down.stdout == f"echo: down {marker}\n" * 2  # answered without the cache
    assert len(fake.requests) == before + 2
    assert _notices(down, "Redis") == [
        f"[wflo] Redis (the LLM cache) at {address} is unreachable: LLM calls are answered, "
        "budgeted and recorded, but not cached, until it is back; start it with `wflo up`, "
        "or point WFLO_REDIS_URL at the configured address"
    ]
    _clean(down)
    assert _calls(session_id, "redis-down") == [False, False]  # recorded in the ledger

    private.stack.up()
    assert private.info("redis").url == killed.url
    time.sleep(1.5)  # the cache probes an absent Redis at most once a second
    before = len(fake.requests)
    back = kernel.run(_llm_cell("redis-back", f"back {marker}", f"back {marker}"))
    assert back.status == "ok", back.error
    assert back.stdout == f"echo: back {marker}\n" * 2
    assert len(fake.requests) == before + 1  # the second answer came from the cache
    notices = _notices(back, "Redis")
    assert len(notices) == 1, back.notices
    assert re.fullmatch(
        rf"\[wflo\] Redis \(the LLM cache\) at {re.escape(address)} is back after \d+ s: "
        "LLM calls are cached again",
        notices[0],
    )
    _clean(back)
    assert _calls(session_id, "redis-back") == [False, True]


def test_up_restarts_a_killed_kafka_at_its_address(private: PrivateStack) -> None:
    killed = private.kill("kafka")
    engines = private.stack.up()  # no --with-kafka: the stack had it
    assert engines["kafka"].url == killed.url
    assert engines["kafka"].pid != killed.pid
    assert health(engines["kafka"]) is None


@pytest.mark.redis
def test_a_cache_follows_redis_to_a_new_port(tmp_path: Path) -> None:
    """Redis's port is taken while it is down: ``up`` moves it, and the cache's client
    (its commands and its invalidation feed) moves there at its next call, saying each
    way once."""
    stack = LocalStack(tmp_path)
    first = stack.up(only=["redis"])["redis"]
    notices: list[str] = []
    client = connect_redis(first.url)
    cache = LlmCache(client, retry_after_s=0.2)
    cache.watch_outages(notices.append, lambda: _url(stack.engines().get("redis")))
    key = _key(f"moved-{uuid.uuid4().hex[:8]}", {"model": "gpt-4o-mini", "messages": []})
    squatter = None
    try:
        assert cache.near is not None and cache.near.wait_armed(5)
        os.killpg(first.pid, signal.SIGKILL)
        wait_until(lambda: not cache.ping(), 10, what="the cache to miss Redis")
        squatter = _squat("127.0.0.1", int(first.url.rsplit(":", 1)[1].split("/")[0]))
        moved = stack.up(only=["redis"])["redis"]
        assert moved.url != first.url
        wait_until(cache.ping, 10, what="the cache to reach the moved Redis")
        cache.set(key, _response())
        assert cache.get(key) is not None
        assert cache.near.wait_armed(5)  # the feed reconnected at the new address
        old, new = (u.removeprefix("redis://") for u in (first.url, moved.url))
        assert len(notices) == 2, notices
        assert notices[0].startswith(f"Redis (the LLM cache) at {old} is unreachable: ")
        assert re.fullmatch(
            rf"Redis \(the LLM cache\) at {re.escape(new)} is back after \d+ s: "
            "LLM calls are cached again",
            notices[1],
        )
    finally:
        if squatter is not None:
            squatter.close()
        cache.close()
        client.close()
        stack.down()


def _url(info: EngineInfo | None) -> str | None:
    return info.url if info is not None else None


def _squat(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` (once a killed server's lingering sockets let go of it)."""

    def listening() -> socket.socket | None:
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind((host, port))
        except OSError:
            squatter.close()
            return None
        squatter.listen()
        return squatter

    return wait_until(listening, 30, interval=0.1, what=f"port {port} to be free")
