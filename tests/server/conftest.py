"""pytest-jupyter's server fixtures (``jp_fetch``, ``jp_serverapp``, ``jp_server_config``,
...) for the tests in this folder only: imported here rather than registered as a plugin
for the whole suite, so their autouse fixtures (a fresh event loop per test, server
clean-up) and their async-test hooks touch no other test."""

from __future__ import annotations

from pytest_jupyter.jupyter_server import *  # noqa: F403
