"""One notice when an engine goes and one when it is back (``OutageNotices``), and the
local stack's choice of ports for a restarted engine (``previous_ports``)."""

from __future__ import annotations

import re
import socket
import threading

from wflo_jupyter.core.outage import OutageNotices
from wflo_jupyter.stack.engines import EngineInfo
from wflo_jupyter.stack.plans import free_ports, previous_ports


def test_one_notice_each_way_however_many_meet_the_outage() -> None:
    said: list[str] = []
    outages = OutageNotices("Temporal", "WFLO_TEMPORAL_ADDRESS", said.append)
    assert outages.back("h:1", "cells run again") is False  # never down: nothing to say
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(outages.down("h:1", "refused")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert outages.down_since is not None
    assert outages.back("h:1", "cells run again") is True
    assert outages.back("h:1", "cells run again") is False
    assert outages.down_since is None
    assert said[0] == (
        "Temporal at h:1 is unreachable: refused; start it with `wflo up`, or point "
        "WFLO_TEMPORAL_ADDRESS at the configured address"
    )
    assert re.fullmatch(r"Temporal at h:1 is back after \d+ s: cells run again", said[1])
    assert len(said) == 2


def test_a_silent_outage_is_not_announced_but_its_end_is() -> None:
    said: list[str] = []
    outages = OutageNotices("Redis", "WFLO_REDIS_URL", said.append)
    assert outages.down("h:2", "uncached", announce=False) is True
    assert said == []
    assert outages.back("h:3", "cached again") is True
    assert said[0].startswith("Redis at h:3 is back after ")


def test_a_restarted_engine_gets_its_ports_back_while_they_are_free() -> None:
    grpc, ui, http = free_ports(3)
    info = EngineInfo(
        "temporal",
        f"127.0.0.1:{grpc}",
        1,
        {"ui": f"http://127.0.0.1:{ui}", "http": f"http://127.0.0.1:{http}"},
    )
    keys = ("url", "ui", "http")
    assert previous_ports(info, keys) == [grpc, ui, http]
    assert previous_ports(None, keys) is None
    assert previous_ports(EngineInfo("temporal", info.url, 1, {}), keys) is None  # unknown
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ui))
        squatter.listen()
        assert previous_ports(info, keys, wait_s=0.3) is None  # one taken: all new
