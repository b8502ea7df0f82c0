"""Engine logs: what a failed start wrote is read whole, not only its tail."""

from __future__ import annotations

from pathlib import Path

from wflo_jupyter.stack.logs import open_log, since, tail


def test_a_bind_error_above_a_long_trace_is_still_found(tmp_path: Path) -> None:
    fh, path, offset = open_log(tmp_path, "temporal")
    fh.write(
        b'level=ERROR msg="Failed to start gRPC listener" error="bind: address already in use"\n'
    )
    fh.write(b"panic: runtime error\n" + b"goroutine frame\n" * 200)
    fh.close()
    assert "address already in use" not in tail(path, offset)  # the tail holds the trace
    assert "address already in use" in since(path, offset)


def test_since_reads_only_after_the_offset(tmp_path: Path) -> None:
    fh, path, _ = open_log(tmp_path, "redis")
    fh.write(b"address already in use\n")
    fh.close()
    fh, path, offset = open_log(tmp_path, "redis")
    fh.write(b"ready\n")
    fh.close()
    assert "already in use" not in since(path, offset)
    assert since(tmp_path / "missing.log") == ""
