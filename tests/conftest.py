"""Suite-wide engines: every integration test talks to a real engine.

Engines come from ``WFLO_*`` variables when set, else from a local stack the suite
starts in its own ``WFLO_HOME`` (and stops at the end). Each run gets its own ledger
database, created here and dropped afterwards. A missing engine fails loudly.

Every event the suite produces is validated against its schema: relays (the kernels'
and ``wflo relay``'s) check each envelope before they publish it (``WFLO_VALIDATE_EVENTS``),
and the whole outbox of each database these fixtures made is checked before it is
dropped (``EventAudit``); a violation fails the run (``pytest_sessionfinish``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.event_audit import EVENT_AUDIT, EventAudit
from wflo_jupyter.ledger.store import drop_database, ensure_database, with_database
from wflo_jupyter.sandbox.docker_engine import connect_docker
from wflo_jupyter.stack.local import LocalStack
from wflo_jupyter.stack.settings import Settings, normalize_database_url

RUNTIME_IMAGE = os.environ.get("WFLO_RUNTIME_IMAGE", "wflo-runtime:python3.11")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[EVENT_AUDIT] = EventAudit()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run whose outboxes held an event that does not match its schema fails.

    Why here and not in a test that runs last: the outboxes are read as their databases
    are dropped (each test's own database after that test, the session's after the last
    test and every kernel have ended), so they hold every event, including those written
    while fixtures tear down; a last test would miss those and would not run at all when
    a subset of the suite is selected. A ``pytest.fail`` in a finalizer only marks one
    test's teardown as an error; setting the exit status makes the run itself fail."""
    audit = session.config.stash[EVENT_AUDIT]
    if audit.violations and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    audit = config.stash[EVENT_AUDIT]
    if not audit.databases:
        return
    if audit.violations:
        terminalreporter.section("events that do not match their schema", red=True)
        for line in audit.violations:
            terminalreporter.line(line, red=True)
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(audit.checked.items()))
    terminalreporter.line(
        f"event schemas: {audit.checked.total()} outbox events of {audit.databases} databases "
        f"checked ({kinds}), {len(audit.violations)} invalid"
    )


@pytest.fixture(scope="session")
def stack_env(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[dict[str, str]]:
    """Start (or find) every engine; export ``WFLO_*`` for this process and its kernels."""
    home = tmp_path_factory.mktemp("wflo-home")
    settings = Settings.from_env({**os.environ, "WFLO_HOME": str(home)})
    needed = [e for e in ("postgres", "redis", "temporal", "kafka") if not settings.configured(e)]
    stack = LocalStack(home)
    engines = stack.up(with_kafka="kafka" in needed, only=needed) if needed else {}

    def url(engine: str) -> str:
        configured = settings.configured(engine)
        if configured:
            return configured
        return engines[engine].url

    base_db = normalize_database_url(url("postgres"))
    test_db = with_database(base_db, f"wflo_test_{uuid.uuid4().hex[:10]}")
    ensure_database(test_db)
    env = {
        "WFLO_HOME": str(home),
        "WFLO_DATABASE_URL": test_db,
        "WFLO_REDIS_URL": url("redis"),
        "WFLO_TEMPORAL_ADDRESS": url("temporal"),
        "WFLO_KAFKA_BOOTSTRAP": url("kafka"),
        "WFLO_RUNTIME_IMAGE": RUNTIME_IMAGE,
        "WFLO_VALIDATE_EVENTS": "1",
    }
    ui = engines["temporal"].extra.get("ui") if "temporal" in engines else None
    if ui:  # the dev server's web UI: step links in %wflo runs and the lab panel
        env["WFLO_TEMPORAL_UI"] = ui
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        pytestconfig.stash[EVENT_AUDIT].check_database(test_db)
        drop_database(test_db)
        if engines:
            stack.down()


@pytest.fixture(scope="session")
def database_url(stack_env: dict[str, str]) -> str:
    return stack_env["WFLO_DATABASE_URL"]


@pytest.fixture(scope="session")
def redis_url(stack_env: dict[str, str]) -> str:
    return stack_env["WFLO_REDIS_URL"]


@pytest.fixture(scope="session")
def temporal_address(stack_env: dict[str, str]) -> str:
    return stack_env["WFLO_TEMPORAL_ADDRESS"]


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_env: dict[str, str]) -> str:
    return stack_env["WFLO_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = connect_docker(os.environ.get("WFLO_DOCKER_HOST"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(RUNTIME_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"runtime image {RUNTIME_IMAGE} missing: run `wflo image build` (make runtime-image)"
        )
    return RUNTIME_IMAGE


@pytest.fixture
def fresh_database_url(database_url: str, pytestconfig: pytest.Config) -> Iterator[str]:
    """A database of its own for one test (migrations from scratch)."""
    url = with_database(database_url, f"wflo_t_{uuid.uuid4().hex[:10]}")
    ensure_database(url)
    yield url
    pytestconfig.stash[EVENT_AUDIT].check_database(url)
    drop_database(url)


REPO_ROOT = Path(__file__).resolve().parent.parent
