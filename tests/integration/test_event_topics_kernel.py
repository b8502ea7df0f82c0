"""The session's own events, end to end: a real kernel runs ``%%wflo`` cells and line
magics, and an outside Kafka client then finds in ``wflo.sandbox``, ``wflo.cache`` and
``wflo.audit`` what happened to its sandbox (started, restarted, OOM, closed), its cache
clear and its team join: each event valid against its schema
(envelope v2), keyed and stamped with the session, in the order it happened."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.kernel_driver import Kernel
from tests.outbox_reading import read_messages
from wflo_jupyter.events.kafka import EVENT_ID_HEADER
from wflo_jupyter.events.schemas import EventSchemas

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.kafka,
    pytest.mark.docker,
    pytest.mark.temporal,
    pytest.mark.kernel,
]


def of_session(bootstrap: str, topic: str, session_id: str) -> list[dict[str, Any]]:
    """The bodies of ``session_id``'s events in ``topic``, in the order read (one
    partition holds them all: the key is the session), each checked on the way."""
    bodies = []
    schemas = EventSchemas()
    for key, headers, body in read_messages(bootstrap, topic):
        if body.get("session") != session_id:
            continue
        assert key == session_id
        assert headers[EVENT_ID_HEADER].decode() == body["id"]
        schemas.validate(body)
        bodies.append(body)
    assert len({b["id"] for b in bodies}) == len(bodies)  # each once
    return bodies


def test_sandbox_cache_and_team_events_reach_their_topics(
    stack_env: dict[str, str],
    runtime_image: str,
    kafka_bootstrap: str,
) -> None:
    team = f"topics-{uuid.uuid4().hex[:8]}"
    kernel = Kernel()
    try:
        kernel.load_wflo()
        session_id = kernel.wflo_session_id()
        runs = [
            kernel.run("%%wflo --name first\nx = 1\nprint(x)"),
            kernel.run("%wflo restart"),
            kernel.run("%%wflo --memory 128m\nblob = bytearray(600 * 1024 * 1024)"),
            kernel.run("%%wflo\nprint('x' in dir())"),
            kernel.run("%wflo cache clear"),
            kernel.run(f"%wflo budget --team {team} 1.00"),
            kernel.run(f"%wflo team {team}"),
        ]
    finally:
        kernel.shutdown()  # the session closes its sandbox and drains its relay
    assert not kernel.manager.is_alive()
    assert runs[0].stdout == "1\n"
    assert "memory limit 128m exceeded (OOM-killed)" in runs[2].error_line
    assert runs[3].stdout == "False\n"
    assert [r.status for r in (runs[1], runs[4], runs[5], runs[6])] == ["ok"] * 4

    sandbox = of_session(kafka_bootstrap, "wflo.sandbox", session_id)
    lives = [
        (b["type"], b["payload"].get("reason"), b["payload"]["sandbox_id"])
        for b in sandbox
        if b["type"] != "sandbox.reaped"  # whatever this kernel found left: any, or none
    ]
    assert [(t, r) for t, r, _ in lives] == [
        ("sandbox.started", None),
        ("sandbox.stopped", "restart"),
        ("sandbox.started", None),
        ("sandbox.oom", None),
        ("sandbox.started", None),
        ("sandbox.stopped", "close"),
    ]
    ids = [i for _, _, i in lives]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]
    assert len({ids[0], ids[2], ids[4]}) == 3
    oom = next(b for b in sandbox if b["type"] == "sandbox.oom")
    assert oom["payload"]["memory_bytes"] == 128 * 1024**2
    assert oom["payload"]["during_cell"] is True
    assert all(b["version"] == 1 and b["step"] is None for b in sandbox)

    [cleared] = of_session(kafka_bootstrap, "wflo.cache", session_id)
    assert cleared["type"] == "cache.cleared"
    assert cleared["payload"]["scope"] == "all"
    assert cleared["payload"]["removed"] >= 0

    [joined] = of_session(kafka_bootstrap, "wflo.audit", session_id)
    assert (joined["type"], joined["payload"]["team"]) == ("team.joined", team)
    team_set = [
        body
        for key, _, body in read_messages(kafka_bootstrap, "wflo.audit")
        if key == f"team:{team}"
    ]
    assert [(b["type"], b["payload"]["op"], b["session"]) for b in team_set] == [
        ("budget.updated", "set", None)
    ]
