"""Sandbox sessions seen from a real kernel: state between cells, --fresh, restart,
live output, rich display, --in/--out, and a long session that leaks nothing."""

from __future__ import annotations

from collections.abc import Callable

import docker

from tests.kernel_driver import Kernel
from tests.marks import KERNEL
from wflo_jupyter.ledger.store import Ledger

pytestmark = KERNEL


def test_state_persists_and_fresh_is_isolated(kernel: Kernel) -> None:
    assert kernel.run("%%wflo\nx = 41").status == "ok"
    assert kernel.run("%%wflo\nprint(x + 1)").stdout == "42\n"
    fresh = kernel.run("%%wflo --fresh\nprint('x' in globals())")
    assert fresh.stdout == "False\n"
    assert kernel.run("%%wflo\nprint(x)").stdout == "41\n"  # --fresh did not touch the session


def test_restart_drops_state(kernel: Kernel) -> None:
    kernel.run("%%wflo\nkept = 1")
    restart = kernel.run("%wflo restart")
    assert "[wflo] new sandbox session: state from earlier cells was dropped" in restart.notices
    after = kernel.run("%%wflo\nprint('kept' in globals())")
    assert after.stdout == "False\n"


def test_output_streams_live(kernel: Kernel) -> None:
    run = kernel.run(
        "%%wflo\nimport time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    )
    arrivals = {text.strip(): t for t, name, text in run.timeline if name == "stdout"}
    assert set(arrivals) >= {"first", "second"}
    assert arrivals["second"] - arrivals["first"] > 1.0  # 'first' arrived while the cell slept


def test_last_expression_and_rich_display(kernel: Kernel) -> None:
    run = kernel.run("%%wflo\n6 * 7")
    assert {"text/plain": "42"} in [
        {k: v for k, v in d.items() if k == "text/plain"} for d in run.data
    ]
    frame = kernel.run("%%wflo\nimport pandas as pd\ndisplay(pd.DataFrame({'a': [1, 2]}))")
    assert any("<table" in d.get("text/html", "") for d in frame.data)
    figure = kernel.run(
        "%%wflo\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title('hi')"
    )
    assert any("image/png" in d for d in figure.data)


def test_in_and_out_values(kernel: Kernel) -> None:
    kernel.run(
        "import pandas as pd, numpy as np\nsrc = pd.DataFrame({'n': [1, 2, 3]})\nfactor = 10"
    )
    run = kernel.run(
        "%%wflo --in src,factor --out doubled,arr,info\n"
        "import numpy as np\n"
        "doubled = src.assign(n=src.n * factor)\n"
        "arr = np.arange(4)\n"
        "info = {'rows': len(src)}\n"
    )
    assert run.status == "ok", run.error
    check = kernel.run(
        "print(type(doubled).__name__, doubled.n.tolist(), arr.tolist(), arr.dtype, info)"
    )
    assert check.stdout == "DataFrame [10, 20, 30] [0, 1, 2, 3] int64 {'rows': 3}\n"


def test_unsafe_out_is_refused_in_one_line(kernel: Kernel) -> None:
    run = kernel.run(
        "%%wflo --out thing,ok_value\nclass Thing: pass\nthing = Thing()\nok_value = 5"
    )
    assert run.error is not None and run.error["ename"] == "UnsafeOutput"
    assert "thing" in run.error["evalue"] and "Thing" in run.error["evalue"]
    assert "\n" not in run.error["evalue"]
    assert kernel.run("print(ok_value)").stdout == "5\n"  # the safe value still came back
    assert kernel.run("print('thing' in globals())").stdout == "False\n"


def test_missing_in_variable_is_a_usage_error(kernel: Kernel) -> None:
    run = kernel.run("%%wflo --in nowhere_to_be_found\nprint(1)")
    assert "UsageError: --in: no variable named 'nowhere_to_be_found' in the notebook" in run.stderr


def test_many_cells_leak_nothing(
    make_kernel: Callable[..., Kernel],
    docker_client: docker.DockerClient,
    database_url: str,
) -> None:
    """500 cells in one session, 100 of them failing in various ways: the ledger has 500
    steps and, once the session ends, no container of it is left."""
    kernel = make_kernel()
    session_id = kernel.wflo_session_id()
    failures = [
        "raise ValueError('bad')",
        "1 / 0",
        "import sys; sys.exit(2)",
        "undefined_name",
        "raise KeyboardInterrupt",
    ]
    code = (
        "from IPython import get_ipython\n"
        "ip = get_ipython()\n"
        "failed = 0\n"
        f"failures = {failures!r}\n"
        "for i in range(500):\n"
        "    body = failures[(i // 5) % 5] if i % 5 == 0 else f'v = {i}'\n"
        "    try:\n"
        "        ip.run_cell_magic('wflo', '--timeout 30', body)\n"
        "    except Exception:\n"
        "        failed += 1\n"
        "print('failed', failed)\n"
    )
    run = kernel.run(code, timeout=1500)
    assert run.stdout.strip().endswith("failed 100"), run.stdout[-500:] + run.stderr[-2000:]
    assert kernel.alive()
    kernel.close()  # the session ends: unloaded, shut down
    ledger = Ledger.connect(database_url)
    try:
        steps = ledger.steps(session_id, limit=10_000)
    finally:
        ledger.close()
    assert len(steps) == 500
    assert sum(1 for s in steps if s.status == "failed") == 100
    leftover = docker_client.containers.list(
        all=True, filters={"label": f"org.wflo.session={session_id}"}
    )
    assert leftover == []
