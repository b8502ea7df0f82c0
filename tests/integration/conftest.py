"""Fixtures the integration tests share: real Jupyter kernels with the extension loaded,
the suite's ledger (``ledger``), and sandbox sessions of one isolation backend.

``kernel`` is one loaded kernel per module (its extra environment: ``kernel_env``, which a
module overrides); ``make_kernel`` starts more, each with its own environment, and ends
them after the test. ``make_session`` builds ``SandboxSession`` objects for the module's
``backend`` (``docker``, ``bubblewrap`` or ``unisolated``: a module defines that fixture)
and checks, once they are closed, that nothing of them is left on the host."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from tests.helpers import wait_until
from tests.kernel_driver import Kernel, loaded_kernel
from tests.sandboxes import (
    leftover_cgroups,
    leftover_dirs,
    sandbox_processes,
    session_containers,
)
from wflo_jupyter.core.errors import SandboxError
from wflo_jupyter.ledger.store import Ledger
from wflo_jupyter.sandbox.bwrap import BubblewrapLauncher, probe_bubblewrap
from wflo_jupyter.sandbox.isolation import UnisolatedLauncher
from wflo_jupyter.sandbox.session import SandboxSession

# -- kernels ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_env() -> dict[str, str]:
    """Extra environment of the module's ``kernel``."""
    return {}


@pytest.fixture(scope="module")
def kernel(
    stack_env: dict[str, str], runtime_image: str, kernel_env: dict[str, str]
) -> Iterator[Kernel]:
    """One kernel for the module, with the stack's environment and
    ``%load_ext wflo_jupyter`` done; unloaded and shut down after the module."""
    with loaded_kernel(kernel_env) as k:
        yield k


@pytest.fixture
def make_kernel(stack_env: dict[str, str], runtime_image: str) -> Iterator[Callable[..., Kernel]]:
    """``make_kernel(env=None, load=True)``: another kernel with ``env`` added to the
    stack's environment, the extension loaded unless ``load=False``; each is closed
    (unloaded, shut down) after the test unless the test closed it."""
    kernels: list[Kernel] = []

    def make(env: dict[str, str] | None = None, *, load: bool = True) -> Kernel:
        kernel = Kernel(env=env)
        kernels.append(kernel)
        if load:
            kernel.load_wflo()
        return kernel

    yield make
    for kernel in kernels:
        kernel.close()


@pytest.fixture
def removed_images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Image tags a test adds here are removed after it, the last added first."""
    tags: list[str] = []
    yield tags
    for tag in reversed(tags):
        with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Iterator[Ledger]:
    """The suite's ledger, for a module to read what its kernels recorded."""
    opened = Ledger.connect(database_url)
    yield opened
    opened.close()


# -- sandbox sessions -------------------------------------------------------------------


@pytest.fixture(scope="session")
def bwrap_ready() -> str:
    try:
        support = probe_bubblewrap()
    except SandboxError as exc:
        pytest.fail(f"bubblewrap is needed for these tests: {exc}")
    return support.mode


LAUNCHERS = {"bubblewrap": BubblewrapLauncher, "unisolated": UnisolatedLauncher}


@pytest.fixture
def make_session(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``make_session(launcher=None, **options)``: a ``SandboxSession`` on ``backend``
    (Docker: the runtime image; the others: a new launcher of theirs unless ``launcher``
    is given). After the test every session is closed and nothing may be left: no
    container of it, no sandbox process, socket directory or cgroup of this process."""
    client = request.getfixturevalue("docker_client") if backend == "docker" else None
    if backend == "docker":
        image = request.getfixturevalue("runtime_image")
    elif backend == "bubblewrap":
        request.getfixturevalue("bwrap_ready")
    made: list[SandboxSession] = []
    dirs_before = leftover_dirs()

    def make(launcher: Any = None, **options: Any) -> SandboxSession:
        if backend == "docker":
            options.setdefault("image", image)
        else:
            options["launcher"] = launcher or LAUNCHERS[backend]()
        session = SandboxSession(client, f"test-{backend}-{uuid.uuid4().hex[:8]}", **options)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()
        if client is not None:
            assert session_containers(client, session.session_id) == []
    wait_until(lambda: sandbox_processes() == [], 30, interval=0.05, what="every sandbox to end")
    assert leftover_dirs() <= dirs_before
    assert leftover_cgroups() == []


@pytest.fixture
def session(make_session: Any) -> SandboxSession:
    return make_session()
