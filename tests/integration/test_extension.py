"""Loading and unloading the extension in a real kernel."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers import wait_until
from tests.kernel_driver import Kernel
from tests.marks import KERNEL

pytestmark = KERNEL

THREADS = (
    "import threading; print(sorted({t.name.rstrip('_0123456789') "
    "for t in threading.enumerate() if t.name.startswith('wflo')}))"
)


def test_unload_stops_threads_and_magics(make_kernel: Callable[..., Kernel]) -> None:
    kernel = make_kernel(load=False)  # this test loads and unloads the extension itself
    assert kernel.run("%load_ext wflo_jupyter").status == "ok"
    assert kernel.run("%load_ext wflo_jupyter").status == "ok"  # loading twice is harmless
    assert kernel.run("%%wflo\nprint('up')").stdout == "up\n"
    running = kernel.run(THREADS).stdout
    assert "wflo-loop" in running
    assert "wflo-outbox-relay" in running
    assert kernel.run("%unload_ext wflo_jupyter").status == "ok"
    wait_until(
        lambda: kernel.run(THREADS).stdout.strip() == "[]",
        30,
        interval=0.1,
        what="the kernel's wflo threads to end",
    )
    gone = kernel.run("%%wflo\nprint(1)")
    assert "Cell magic `%%wflo` not found" in gone.stderr + gone.error_line, gone
    assert gone.status == "error"
    assert kernel.run("%load_ext wflo_jupyter").status == "ok"  # and back again
    assert kernel.run("%%wflo\nprint('again')").stdout == "again\n"
