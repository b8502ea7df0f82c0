"""The Redis pieces a ``wflo worker``'s step travels through, against a real Redis:
``StepOutputChannel`` (live output, in order, nothing missed once subscribed, ``end``)
and ``StepValues`` (``--in``/``--out`` by reference: a round trip, the size limit in one
line naming the largest value, a missing blob, forgetting)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from wflo_jupyter.cache.redis_client import connect_redis
from wflo_jupyter.cache.step_output import StepOutputChannel
from wflo_jupyter.cache.step_values import StepValues, StepValuesError

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connected = connect_redis(redis_url)
    yield connected
    connected.close()


def test_output_arrives_in_order_and_ends(client: redis.Redis) -> None:
    step_id = str(uuid.uuid4())
    channel = StepOutputChannel(client)
    got: list[tuple[Any, ...]] = []
    done = threading.Event()

    def deliver(event: tuple[Any, ...]) -> None:
        got.append(event)
        if len(got) == 201:
            done.set()

    subscription = channel.subscribe(step_id, deliver)
    try:
        publisher = channel.publisher(step_id)  # published right after subscribe: none lost
        for n in range(200):
            publisher.publish("stream", "stdout", f"line {n}\n")
        publisher.publish("display", {"text/plain": "x"}, {})
        publisher.end()
        assert done.wait(10)
        subscription.close(settle_s=5)
        assert subscription.ended.is_set()
    finally:
        subscription.close()
    assert got[:2] == [("stream", "stdout", "line 0\n"), ("stream", "stdout", "line 1\n")]
    assert [e[2] for e in got[:200]] == [f"line {n}\n" for n in range(200)]
    assert got[200] == ("display", {"text/plain": "x"}, {})


def test_values_round_trip_and_are_forgotten(client: redis.Redis) -> None:
    step_id = str(uuid.uuid4())
    store = StepValues(client)
    store.put_inputs(step_id, {"rows": {"format": "pickle", "data": "gAR9lC4="}})
    assert store.take_inputs(step_id) == {"rows": {"format": "pickle", "data": "gAR9lC4="}}
    assert store.take_inputs(step_id)  # a retry reads them again
    store.put_outputs(step_id, {"total": {"format": "json", "data": "6", "type": "int"}})
    assert store.take_outputs(step_id)["total"]["data"] == "6"
    store.forget(step_id)
    with pytest.raises(StepValuesError) as info:
        store.take_outputs(step_id)
    assert str(info.value) == (
        "--out values from the worker: not in Redis (expired, or Redis was restarted)"
    )


def test_values_over_the_limit_are_one_line_naming_the_largest(client: redis.Redis) -> None:
    store = StepValues(client, limit_bytes=1024 * 1024)
    big = {
        "small": {"format": "pickle", "data": "a"},
        "big": {"format": "pickle", "data": "b" * 2**21},
    }
    with pytest.raises(StepValuesError) as info:
        store.put_inputs(str(uuid.uuid4()), big)
    message = str(info.value)
    assert message.startswith("--in values for the worker: 2.0 MiB is over the 1.0 MiB")
    assert message.endswith("the largest is big (2.0 MiB)")
    assert "\n" not in message
