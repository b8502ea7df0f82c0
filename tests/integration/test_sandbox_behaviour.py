"""What a ``SandboxSession`` does, whatever isolates it: one persistent agent per session
with a framed channel over a Unix socket, live output, rich display, safe values,
timeouts/interrupts, limits, death detection and cleanup; on every backend it applies to:
Docker (a hardened container), bubblewrap (selected explicitly, so it runs on a machine
with a Docker engine too; it needs ``bwrap`` and the system ``/usr/bin/python3``) and the
explicit ``unisolated`` mode (a host process).

A test runs on every backend unless it names its own (``on(...)``); a backend is left out
only where the behaviour does not apply to it. What only one backend does (Docker
hardening, cgroups, bwrap probing, choosing the isolation, reaping) is in
``test_sandbox_docker.py`` and ``test_bwrap_sandbox.py``. ``make_session``
(``conftest.py``) checks after every test that nothing of its sessions is left."""

from __future__ import annotations

import base64
import os
import pickle
import re
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import wait_until
from tests.sandboxes import (
    MB,
    SANDBOX_IDS,
    cell_notices,
    leftover_cgroups,
    ok,
    proc_table,
    processes_with,
    sandbox_pid,
    sandbox_processes,
    session_containers,
    text_plain,
    unique_sleep,
)
from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.sandbox.session import SandboxLimits, SandboxSession
from wflo_jupyter.sandbox.values import ValueTransferError

pytestmark = [pytest.mark.integration]

BACKENDS = {
    "docker": pytest.param("docker", marks=pytest.mark.docker, id="docker"),
    "bubblewrap": pytest.param("bubblewrap", marks=pytest.mark.security, id="bubblewrap"),
    "unisolated": pytest.param("unisolated", marks=pytest.mark.security, id="unisolated"),
}
DATA_LIBRARIES = ("docker", "unisolated")
"""Where the sandbox's python has numpy, pandas and matplotlib: the runtime image and the
kernel's own interpreter (unisolated), not the host's system python3 (bubblewrap)."""
ENFORCED = ("docker", "bubblewrap")
"""Where the sandbox is contained: no network, a read-only system, a pids limit, and
processes that cannot outlive it (an unisolated agent is a plain host process)."""


def on(*backends: str) -> pytest.MarkDecorator:
    """Run a test on these backends only (the behaviour does not apply to the others)."""
    return pytest.mark.parametrize("backend", [BACKENDS[b] for b in backends], indirect=True)


@pytest.fixture(params=list(BACKENDS.values()))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sandbox_left(backend: str, request: pytest.FixtureRequest) -> Any:
    """``sandbox_left(session)``: what of the session's sandboxes is on the host now: its
    containers (Docker), the sandbox processes of this test process (the others)."""
    client = request.getfixturevalue("docker_client") if backend == "docker" else None

    def left(session: SandboxSession) -> list[Any]:
        if client is not None:
            return session_containers(client, session.session_id)
        return sandbox_processes()

    return left


def daemon_code(backend: str, marker: str) -> str:
    """A cell line that starts ``sleep <marker>`` in a new session (out of the agent's
    process group) where the sandbox still ends it; in the agent's group on the host."""
    new_session = backend in ENFORCED
    return (
        "import subprocess\n"
        f"subprocess.Popen(['sleep', {marker!r}], start_new_session={new_session})\n"
    )


# state ---------------------------------------------------------------------------------


def test_state_persists_between_cells(session: SandboxSession, backend: str) -> None:
    assert session.isolation == backend
    first = ok(session, "x = 41")
    second = ok(session, "x + 1")
    failed = session.execute("1 / 0")
    assert text_plain(second) == ["42"]
    assert first.container_id == second.container_id
    assert re.fullmatch(SANDBOX_IDS[backend], first.container_id or ""), first.container_id
    assert (first.execution_count, second.execution_count) == (1, 2)
    assert failed.error_line == "ZeroDivisionError: division by zero"
    for result in (first, second, failed):
        cell_notices(backend, result)  # every cell says how it is isolated
        assert not result.state_lost


def test_imports_and_functions_survive(session: SandboxSession) -> None:
    ok(session, "import math\ndef area(r):\n    return math.pi * r * r\n")
    assert ok(session, "print(round(area(2), 3))").stdout == "12.566\n"


def test_fresh_has_no_state_and_leaves_no_sandbox(
    session: SandboxSession, backend: str, request: pytest.FixtureRequest
) -> None:
    ok(session, "x = 41")
    fresh = session.run_fresh("print(x)")
    assert not fresh.ok
    assert fresh.error_line == "NameError: name 'x' is not defined"
    assert fresh.container_id != session.container_id
    cell_notices(backend, fresh)
    if backend == "docker":
        with pytest.raises(docker.errors.NotFound):
            request.getfixturevalue("docker_client").containers.get(fresh.container_id)
    else:
        # its process ended (an ended process has no command line, an unreaped one neither)
        assert not proc_table().get(sandbox_pid(fresh.container_id), (0, b""))[1]
    assert text_plain(ok(session, "x")) == ["41"]
    assert ok(session, "__name__").displays[0][0]["text/plain"] == "'__main__'"


# live output ---------------------------------------------------------------------------


def test_output_streams_live(session: SandboxSession, backend: str) -> None:
    arrivals: list[tuple[float, str, str]] = []
    started = time.monotonic()

    def on_stream(name: str, text: str) -> None:
        arrivals.append((time.monotonic() - started, name, text))

    code = (
        "import sys, time\nprint('first')\ntime.sleep(1)\nprint('second')\n"
        "print('err', file=sys.stderr)"
    )
    result = ok(session, code, on_stream=on_stream)
    assert {name for _, name, _ in arrivals} == {"stdout", "stderr"}
    assert "".join(text for _, name, text in arrivals if name == "stdout") == "first\nsecond\n"
    assert "".join(text for _, name, text in arrivals if name == "stderr") == "err\n"
    assert result.stdout == "first\nsecond\n"
    assert result.stderr == "err\n"
    first_at = next(t for t, _, text in arrivals if "first" in text)
    second_at = next(t for t, _, text in arrivals if "second" in text)
    # the first line came during the cell's 1 s sleep (buffered, both would come at the end)
    assert second_at - first_at >= 0.5, arrivals
    assert result.seconds >= 1.0
    cell_notices(backend, result)


def test_partial_line_is_flushed_by_time(session: SandboxSession) -> None:
    arrivals: list[tuple[float, str]] = []

    def on_stream(name: str, text: str) -> None:
        arrivals.append((time.monotonic(), text))

    ok(session, "import time\nprint('a', end='')\ntime.sleep(1)\nprint('b')", on_stream=on_stream)
    assert [text for _, text in arrivals] == ["a", "b\n"]
    assert arrivals[1][0] - arrivals[0][0] >= 0.5  # "a" came during the sleep, not with "b"


def test_subprocess_and_fd_level_output_is_captured(session: SandboxSession) -> None:
    code = (
        "import os, subprocess, sys\n"
        "print('py out')\n"
        "subprocess.run(['echo', 'from a subprocess'])\n"
        "os.system('echo to stderr >&2')\n"
        "os.write(1, b'raw fd write\\n')\n"
        "print('py err', file=sys.stderr)\n"
    )
    result = ok(session, code)
    assert result.stdout == "py out\nfrom a subprocess\nraw fd write\n"
    assert result.stderr == "to stderr\npy err\n"


def test_binary_garbage_and_unicode(session: SandboxSession) -> None:
    result = ok(
        session, "import os\nos.write(1, bytes(range(256)))\nprint()\nprint('é✓' * 3, 'x' * 70000)"
    )
    assert "\ufffd" in result.stdout
    assert "é✓é✓é✓ " + "x" * 70000 in result.stdout


# display -------------------------------------------------------------------------------


def test_last_expression_is_displayed_unless_semicolon(session: SandboxSession) -> None:
    assert text_plain(ok(session, "a = 2\na * 21")) == ["42"]
    assert ok(session, "a * 21;").displays == []
    assert ok(session, "None").displays == []
    assert ok(session, "if a:\n    a + 1\n").displays == []  # not an expression statement
    assert text_plain(ok(session, "_ + 1")) == ["43"]


def test_display_uses_repr_methods_in_order(session: SandboxSession, backend: str) -> None:
    code = (
        "class Card:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>card</b>'\n"
        "    def _repr_png_(self):\n"
        "        return b'\\x89PNG fake'\n"
        "    def __repr__(self):\n"
        "        return 'Card()'\n"
        "print('before')\n"
        "display(Card())\n"
        "print('after')\n"
    )
    order: list[str] = []
    bundles: list[dict[str, Any]] = []

    def on_stream(name: str, text: str) -> None:
        order.append(text.strip())

    def on_display(data: dict[str, Any], metadata: dict[str, Any]) -> None:
        order.append("<display>")
        bundles.append(data)

    ok(session, code, on_stream=on_stream, on_display=on_display)
    assert order == ["before", "<display>", "after"]
    (bundle,) = bundles
    assert bundle["text/html"] == "<b>card</b>"
    assert bundle["text/plain"] == "Card()"
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake"
    # Without callbacks the bundle is in the result, beside the values the cell returned.
    result = ok(
        session,
        "print('before')\ndisplay(Card())\ntotal = sum(nums)\nblob = raw[::-1]\n",
        inputs={"nums": [1, 2, 3], "raw": b"\x00\x01"},
        outputs=["total", "blob"],
    )
    ((bundle, _),) = result.displays
    assert bundle["text/html"] == "<b>card</b>"
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake"
    assert result.outputs == {"total": 6, "blob": b"\x01\x00"}
    cell_notices(backend, result)


def test_mimebundle_and_json_reprs(session: SandboxSession) -> None:
    code = (
        "class Both:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/markdown': '**hi**'}, {'text/markdown': {'k': 1}}\n"
        "    def _repr_json_(self):\n"
        "        return {'a': [1, 2]}\n"
        "Both()"
    )
    ((data, metadata),) = ok(session, code).displays
    assert data["text/markdown"] == "**hi**"
    assert data["application/json"] == {"a": [1, 2]}
    assert data["text/plain"].startswith("<__main__.Both object")
    assert metadata == {"text/markdown": {"k": 1}}


@on(*DATA_LIBRARIES)
def test_matplotlib_figures_are_png(session: SandboxSession) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.title('squares')\n"
        "print(plt.get_backend())\n"
    )
    result = ok(session, code, timeout_s=120)
    assert result.stdout.strip().lower() == "agg"
    pngs = [d for d, _ in result.displays if "image/png" in d]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    shown = ok(session, "plt.figure(); plt.plot([1]); plt.show(); print(len(plt.get_fignums()))")
    assert shown.stdout == "0\n"  # show() sent the figure and closed it
    assert sum("image/png" in d for d, _ in shown.displays) == 1
    assert "non-interactive" not in shown.stderr


@on(*DATA_LIBRARIES)
def test_pandas_dataframe_displays_as_html(session: SandboxSession) -> None:
    result = ok(session, "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    ((data, _),) = result.displays
    assert "<table" in data["text/html"]
    assert "text/plain" in data


# values --------------------------------------------------------------------------------


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def test_in_and_out_round_trip_json_and_bytes(session: SandboxSession) -> None:
    result = ok(
        session,
        "total = sum(nums)\nblob = raw[::-1]\ninfo = {'n': len(nums), 'tags': tags}\n",
        inputs={"nums": [1, 2, 3], "raw": b"\x00\x01\x02", "tags": ["a", None, 1.5]},
        outputs=["total", "blob", "info", "nums"],
    )
    assert result.outputs == {
        "total": 6,
        "blob": b"\x02\x01\x00",
        "info": {"n": 3, "tags": ["a", None, 1.5]},
        "nums": [1, 2, 3],
    }
    assert result.output_errors == {}


def test_unpicklable_input_is_a_one_line_error(session: SandboxSession) -> None:
    with pytest.raises(ValueTransferError, match="cannot send f: function cannot be pickled"):
        session.execute("pass", inputs={"f": lambda: 1})


def test_input_that_cannot_load_in_the_sandbox(session: SandboxSession) -> None:
    # Point is defined in this test module, which does not exist in the sandbox.
    result = session.execute("print('never runs')", inputs={"p": Point(1, 2)})
    assert not result.ok
    assert result.evalue.startswith("cannot load input p:")
    assert result.stdout == ""


@on(*DATA_LIBRARIES)
def test_numpy_and_pandas_out_use_npy_and_arrow(session: SandboxSession) -> None:
    import numpy
    import pandas

    code = (
        "import numpy as np, pandas as pd\n"
        "arr = np.arange(6, dtype='int16').reshape(2, 3) * scale\n"
        "df = pd.DataFrame({'k': ['a', 'b'], 'v': [1.5, 2.5]})\n"
        "s = df['v'] * 2\n"
        "n = np.float64(2.5)\n"
    )
    result = ok(session, code, inputs={"scale": 2}, outputs=["arr", "df", "s", "n"])
    assert result.output_errors == {}
    assert result.outputs["arr"].dtype == numpy.int16
    assert result.outputs["arr"].tolist() == [[0, 2, 4], [6, 8, 10]]
    pandas.testing.assert_frame_equal(
        result.outputs["df"], pandas.DataFrame({"k": ["a", "b"], "v": [1.5, 2.5]})
    )
    assert result.outputs["s"].tolist() == [3.0, 5.0]
    assert result.outputs["s"].name == "v"
    assert result.outputs["n"] == 2.5


def test_unsafe_out_is_refused_with_one_line(session: SandboxSession) -> None:
    code = "import collections\nss = {1, 2}\ndq = collections.deque([1])\nfine = 'yes'\n"
    result = ok(session, code, outputs=["ss", "dq", "fine", "missing"])
    assert result.outputs == {"fine": "yes"}
    assert result.output_errors == {
        "ss": "cannot return ss: set is not JSON, a DataFrame/Series, a numpy array or bytes",
        "dq": (
            "cannot return dq: collections.deque is not JSON, a DataFrame/Series, "
            "a numpy array or bytes"
        ),
        "missing": "cannot return missing: name 'missing' is not defined",
    }


def test_forged_pickle_result_from_a_hostile_cell_is_never_unpickled(
    session: SandboxSession, tmp_path: Path
) -> None:
    """The cell forges a ``result`` frame on the agent's own channel, carrying a pickle
    that would create a file on the HOST if it were ever loaded."""
    marker = tmp_path / "pwned"

    class Pwn:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = base64.b64encode(pickle.dumps(Pwn())).decode()
    code = (
        "import gc, json, os, struct\n"
        "kernel = next(o for o in gc.get_objects() if type(o).__name__ == 'Kernel')\n"
        "fd = kernel.sender._sock.fileno()\n"
        f"evil = {{'format': 'pickle', 'type': 'dict', 'data': {evil!r}}}\n"
        "frame = {'type': 'result', 'id': kernel.current_id, 'ok': True, 'error': None,\n"
        "         'execution_count': 1, 'outputs': {'secret': evil}}\n"
        "body = json.dumps(frame).encode()\n"
        "os.write(fd, struct.pack('>I', len(body)) + body)\n"
    )
    result = session.execute(code, outputs=["secret"])
    assert result.outputs == {}
    assert result.output_errors["secret"].startswith(
        "refused secret (dict): format 'pickle' is not a safe format"
    )
    assert not marker.exists()
    assert text_plain(ok(session, "1 + 1")) == ["2"]  # the session still works


# errors, timeouts, interrupts ----------------------------------------------------------


def test_exception_traceback_points_at_the_cell(session: SandboxSession) -> None:
    result = session.execute("def f():\n    return 1 / 0\nf()\n")
    assert (result.ok, result.exit_reason) == (False, "error")
    assert result.error_line == "ZeroDivisionError: division by zero"
    assert 'File "<wflo-cell-1>", line 2, in f' in result.traceback
    assert "agent.py" not in result.traceback
    assert not result.state_lost


def test_syntax_error_and_system_exit(session: SandboxSession) -> None:
    syntax = session.execute("def broken(:\n")
    assert syntax.ename == "SyntaxError"
    assert "agent.py" not in syntax.traceback
    exited = session.execute("import sys; sys.exit(3)")
    assert (exited.ename, exited.evalue) == ("SystemExit", "3")
    assert ok(session, "import sys; sys.exit(0)").exit_reason == "ok"
    assert ok(session, "print('alive')").stdout == "alive\n"


def test_input_builtin_fails_clearly(session: SandboxSession) -> None:
    result = session.execute("input('name? ')")
    assert result.ename == "EOFError"
    assert "no stdin" in result.evalue


def test_timeout_interrupts_and_keeps_state(session: SandboxSession, backend: str) -> None:
    ok(session, "x = 1")
    result = session.execute("import time\nx = 2\ntime.sleep(30)\nx = 3", timeout_s=1)
    assert result.exit_reason == "timeout"
    assert not result.state_lost
    assert "ran longer than 1 s and was interrupted" in result.evalue
    assert "KeyboardInterrupt" in result.traceback
    assert result.seconds < 10  # interrupted after 1 s, not the cell's 30 s
    cell_notices(backend, result)
    after = ok(session, "x")
    assert text_plain(after) == ["2"]
    assert after.container_id == result.container_id


def test_timeout_kills_a_cell_that_ignores_the_interrupt(
    session: SandboxSession, backend: str
) -> None:
    ok(session, "x = 1")
    first_id = session.container_id
    marker = unique_sleep()
    code = (
        daemon_code(backend, marker)
        + "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    )
    result = session.execute(code, timeout_s=1)
    assert result.exit_reason == "timeout"
    assert result.state_lost
    assert "did not stop when interrupted; the sandbox was killed" in result.evalue
    assert result.seconds < 20  # 1 s, the 2 s grace, the kill: not the cell's 60 s
    cell_notices(backend, result)
    assert processes_with(marker, timeout_s=30) == []  # the daemon died with the sandbox
    after = session.execute("x")
    assert after.error_line == "NameError: name 'x' is not defined"
    assert after.container_id != result.container_id
    assert after.container_id != first_id
    cell_notices(backend, after)


def test_timeout_kills_a_tight_c_loop(session: SandboxSession) -> None:
    result = session.execute("sum(range(10**14))", timeout_s=1)
    assert (result.exit_reason, result.state_lost) == ("timeout", True)
    assert ok(session, "print('next')").stdout == "next\n"


def test_interrupt_from_another_thread(session: SandboxSession) -> None:
    ok(session, "y = 5")
    interrupter: list[threading.Thread] = []

    def on_stream(name: str, text: str) -> None:
        # Interrupt from another thread once the cell is surely running.
        if "started" in text and not interrupter:
            interrupter.append(threading.Thread(target=session.interrupt))
            interrupter[0].start()

    result = session.execute(
        "import time; print('started', flush=True); time.sleep(30)",
        timeout_s=30,
        on_stream=on_stream,
    )
    interrupter[0].join()
    assert (result.exit_reason, result.ename, result.state_lost) == (
        "interrupted",
        "KeyboardInterrupt",
        False,
    )
    assert text_plain(ok(session, "y")) == ["5"]
    assert session.interrupt() is False  # nothing running


# death ---------------------------------------------------------------------------------


def test_os_exit_is_reported_as_agent_death(session: SandboxSession, backend: str) -> None:
    ok(session, "x = 1")
    result = session.execute("import os\nprint('bye', flush=True)\nos._exit(3)")
    assert result.exit_reason == "agent_died"
    assert result.evalue == "the sandbox agent died (exit code 3); state was lost"
    assert result.state_lost
    cell_notices(backend, result)
    assert ok(session, "print(1 + 1)").stdout == "2\n"


def test_sigkill_to_itself(session: SandboxSession) -> None:
    result = session.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert result.exit_reason == "agent_died"
    assert "exit code 137, SIGKILL" in result.evalue
    assert ok(session, "print('ok')").stdout == "ok\n"


def test_cell_closing_the_channel(session: SandboxSession) -> None:
    code = (
        "import gc\n"
        "kernel = next(o for o in gc.get_objects() if type(o).__name__ == 'Kernel')\n"
        "kernel.sender._sock.close()\n"
        "import time; time.sleep(30)\n"
    )
    result = session.execute(code, timeout_s=20)
    assert result.exit_reason == "agent_died"
    assert result.evalue == (
        "the sandbox agent lost its channel to the host (exit code 75); state was lost"
    )
    assert result.state_lost
    assert result.seconds < 10  # noticed at once, not at the cell's 20 s timeout
    assert ok(session, "print('ok')").stdout == "ok\n"


def test_garbage_on_the_channel(session: SandboxSession) -> None:
    code = (
        "import gc, os\n"
        "kernel = next(o for o in gc.get_objects() if type(o).__name__ == 'Kernel')\n"
        "os.write(kernel.sender._sock.fileno(), b'\\xff' * 64)\n"
        "import time; time.sleep(30)\n"
    )
    result = session.execute(code, timeout_s=20)
    assert result.exit_reason == "agent_died"
    assert "channel was corrupted" in result.evalue
    assert ok(session, "print('ok')").stdout == "ok\n"


def test_agent_death_between_cells_is_noticed(
    session: SandboxSession, backend: str, request: pytest.FixtureRequest
) -> None:
    ok(session, "import os, threading, time\nthreading.Timer(0.2, os._exit, (4,)).start()")
    if backend == "docker":
        container = request.getfixturevalue("docker_client").containers.get(
            session.container_id or ""
        )

        def ended() -> bool:
            container.reload()
            return container.status == "exited"

    else:

        def ended() -> bool:  # the agent (and bwrap) gone: an unreaped one has no cmdline
            return sandbox_processes() == []

    wait_until(ended, 30, interval=0.05, what="the sandbox to end")
    result = ok(session, "print('fresh start')")
    assert result.state_lost
    notices = cell_notices(backend, result)
    assert "exit code 4" in notices[0]


# limits --------------------------------------------------------------------------------


def test_output_cap_truncates_with_one_notice(session: SandboxSession) -> None:
    code = (
        "import sys\n"
        "for i in range(300):\n"
        "    sys.stdout.write('x' * 10_000 + '\\n')\n"
        "print('after the cap')\n"
        "finished = True\n"
    )
    result = ok(session, code, output_cap=1 * MB)
    assert len(result.stdout.encode()) <= 1 * MB
    assert result.stderr.count("output cap of 1 MB reached") == 1
    assert "after the cap" not in result.stdout
    assert text_plain(ok(session, "finished")) == ["True"]  # the cell kept running
    assert len(ok(session, "print('small')").stdout) == 6  # the next cell has its own cap


def test_daemon_process_left_running_does_not_block(session: SandboxSession) -> None:
    code = (
        "import subprocess\n"
        "subprocess.Popen(['sh', '-c', 'while true; do echo tick; sleep 0.05; done'])\n"
    )
    ok(session, code)
    time.sleep(0.5)  # the scenario: the daemon keeps writing between cells
    result = ok(session, "print('next')")
    assert "next\n" in result.stdout


@on(*ENFORCED)
def test_pids_limit_contains_a_fork_bomb(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(pids_limit=32))
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(3); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('blocked after', n)\n"
    )
    result = ok(session, code)
    assert "blocked after" in result.stdout
    assert int(result.stdout.split()[2]) < 32
    assert ok(session, "print('alive')").stdout == "alive\n"


# containment ---------------------------------------------------------------------------


@on(*ENFORCED)
def test_no_network(session: SandboxSession) -> None:
    code = (
        "import socket\n"
        "for host, port in (('1.1.1.1', 53), ('169.254.169.254', 80), ('127.0.0.1', 22)):\n"
        "    s = socket.socket()\n"
        "    s.settimeout(2)\n"
        "    try:\n"
        "        s.connect((host, port))\n"
        "        print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('blocked', type(e).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('resolved')\n"
        "except OSError:\n"
        "    print('no dns')\n"
    )
    lines = ok(session, code, timeout_s=30).stdout.splitlines()
    assert len(lines) == 4, lines  # nothing connected
    assert all(line.startswith("blocked") for line in lines[:3]), lines
    assert lines[3] == "no dns"


@on(*ENFORCED)
def test_cannot_write_outside_workspace(make_session: Any) -> None:
    session = make_session(limits=SandboxLimits(workspace_size="8m"))
    code = (
        "import os\n"
        "for path in ('/x', '/usr/x', '/etc/x', '/opt/wflo-agent/x', '/run/wflo/x', '/dev/x',\n"
        "             '/proc/x', '/etc/passwd', '/opt/wflo-agent/agent.py'):\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError:\n"
        "        print('denied')\n"
        "open('/workspace/ok', 'w').write('fine')\n"
        "open('/tmp/ok', 'w').write('fine')\n"
        "print('workspace ok')\n"
        "try:\n"
        "    with open('/workspace/big', 'wb') as f:\n"
        "        f.write(b'0' * (16 * 1024 * 1024))\n"
        "    print('filled')\n"
        "except OSError as e:\n"
        "    print('full', e.errno)\n"
        "print(os.listdir('/run/wflo'))\n"
    )
    lines = ok(session, code).stdout.splitlines()
    assert len(lines) == 12, lines  # nothing was written outside /workspace and /tmp
    assert lines[:9] == ["denied"] * 9
    assert lines[9] == "workspace ok"
    assert lines[10] == "full 28"  # ENOSPC: the workspace tmpfs is size-limited
    assert lines[11] == "[]"  # the socket is unlinked once the agent connected


# lifecycle -----------------------------------------------------------------------------


def test_restart_drops_state(session: SandboxSession) -> None:
    ok(session, "x = 1")
    before = session.container_id
    session.restart()
    assert session.container_id != before
    result = session.execute("x")
    assert result.ename == "NameError"
    assert not result.state_lost  # an explicit restart is not a surprise


def test_close_leaves_nothing_and_is_idempotent(
    session: SandboxSession, backend: str, sandbox_left: Any
) -> None:
    marker = unique_sleep()
    ok(session, daemon_code(backend, marker))
    assert processes_with(marker)
    session.close()
    session.close()
    assert not session.running
    assert processes_with(marker, timeout_s=30) == []
    assert sandbox_left(session) == []
    assert leftover_cgroups() == []


def test_idle_stop_then_transparent_restart(session: SandboxSession, backend: str) -> None:
    ok(session, "x = 1")
    assert session.stop_if_idle(60) is False
    assert session.stop_if_idle(0) is True
    assert not session.running
    result = session.execute("print('back')")
    assert result.ok
    assert result.state_lost
    notices = cell_notices(backend, result)
    assert "idle" in notices[0]
    assert "state from earlier cells was lost" in notices[0]
    assert not ok(session, "pass").state_lost


def test_ping(session: SandboxSession) -> None:
    assert 0 < session.ping() < 5  # a round trip, answered within ping's own 5 s timeout


def test_agent_that_cannot_start_leaks_nothing(
    make_session: Any, sandbox_left: Any, tmp_path: Path
) -> None:
    (tmp_path / "agent.py").write_text("raise SystemExit('agent is broken')\n")
    tmp_path.chmod(0o755)  # the agent dir is read by uid 1000 inside the container
    session = make_session(agent_dir=tmp_path, ready_timeout_s=20)
    with pytest.raises(SandboxError, match=r"exited at start \(exit code 1\): agent is broken"):
        session.start()
    assert sandbox_left(session) == []


def test_many_cells_with_failures_leak_nothing(
    session: SandboxSession, backend: str, sandbox_left: Any
) -> None:
    session.start()
    first = session.container_id
    for i in range(60):
        code = ("1 / 0", "print(i)", "raise KeyError(i)", "i")[i % 4]
        session.execute(code, inputs={"i": i})
    assert session.container_id == first  # failing cells keep the one sandbox
    if backend == "docker":
        assert len(sandbox_left(session)) == 1
    session.close()
    assert sandbox_left(session) == []
