"""``wflo_jupyter.procfs`` against real processes of this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.helpers import wait_until
from wflo_jupyter import procfs


def test_stat_of_this_process() -> None:
    found = procfs.stat(os.getpid())
    assert found is not None
    assert found.ppid == os.getppid()
    assert found.pgrp == os.getpgrp()
    assert found.running
    assert found.start_ticks.isdigit()


def test_missing_process_reads_as_gone() -> None:
    gone = 2**22 + 12345  # above the default pid_max
    assert procfs.stat(gone) is None
    assert procfs.start_ticks(gone) == ""
    assert not procfs.is_alive(gone)
    assert procfs.cmdline(gone) == []
    assert procfs.exe_name(gone) == ""
    assert procfs.cwd(gone) == ""
    assert procfs.started_at(gone) is None
    assert not procfs.is_alive(0)


def test_a_zombie_is_not_alive_and_a_start_time_names_one_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = procfs.start_ticks(child.pid)
    # the child exits; not reaped yet, it stays a zombie
    wait_until(lambda: not procfs.is_alive(child.pid), 10, what="the child to exit")
    found = procfs.stat(child.pid)
    assert found is not None and found.state == "Z"
    assert not procfs.is_alive(child.pid)
    child.wait()
    assert procfs.is_alive(os.getpid(), procfs.start_ticks(os.getpid()))
    assert not procfs.is_alive(os.getpid(), start or "1")


def test_descendants_are_breadth_first_and_exclude_the_roots() -> None:
    sleeper = "import time; time.sleep(30)"
    script = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {sleeper!r}]); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        below = wait_until(lambda: procfs.descendants([parent.pid]), 10, what="the grandchild")
        assert parent.pid not in below
        assert len(below) == 1
        assert procfs.stat(below[0]).ppid == parent.pid
        mine = procfs.descendants([os.getpid()])
        assert mine.index(parent.pid) < mine.index(below[0])
        assert procfs.cmdline(below[0])[:2] == [sys.executable.encode(), b"-c"]
    finally:
        for pid in procfs.descendants([parent.pid]):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_started_at_exe_and_cwd_of_this_process() -> None:
    started = procfs.started_at(os.getpid())
    assert started is not None
    assert time.time() - 3600 * 24 < started <= time.time()
    assert procfs.exe_name(os.getpid()).startswith("python")
    assert procfs.cwd(os.getpid()) == os.getcwd()
    assert os.getpid() in procfs.all_pids()
