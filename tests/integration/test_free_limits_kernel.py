"""Free provider endpoints and model output limits from unchanged SDK code in a real
``%%wflo`` cell: ``count_tokens``, ``models.list`` / ``models.retrieve`` work against
the fake provider and with ``WFLO_PROVIDER=mock``, and land in the ledger at $0 with
nothing reserved; a ``max_tokens`` above the model's limit raises the SDK's
``BadRequestError`` naming the limit, before anything is reserved or sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.fakes.providers import FakeProvider
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL

pytestmark = LLM_KERNEL


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel_env(fake: FakeProvider) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-host-secret",
        "ANTHROPIC_API_KEY": "sk-ant-host-secret",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
        "WFLO_ANTHROPIC_BASE_URL": fake.url,
    }


CELL = """%%wflo --budget 0.05 --name {name}
import anthropic, openai
counted = anthropic.Anthropic().messages.count_tokens(
    model="claude-3-5-haiku-latest", messages=[{{"role": "user", "content": "hello there"}}])
ids = [m.id for m in openai.OpenAI().models.list()]
one = openai.OpenAI().models.retrieve("gpt-4o-mini")
claude = [m.id for m in anthropic.Anthropic().models.list()]
print(counted.input_tokens > 0, "gpt-4o-mini" in ids, one.id, one.object, len(claude) > 0)
try:
    openai.OpenAI(max_retries=0).chat.completions.create(model="gpt-4o-mini",
        max_tokens=100000, messages=[{{"role": "user", "content": "too long"}}])
except openai.BadRequestError as exc:
    print("refused", exc.status_code, exc.body["param"], "output limit of 16,384 tokens" in str(exc))
"""


def _ledger(stack_env: dict[str, str], name: str) -> tuple[list[tuple], int]:
    """The step's ``llm_calls`` (endpoint, cost, reservation) and its LLM reservations."""
    engine = create_engine(stack_env["WFLO_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            calls = conn.execute(
                text(
                    "SELECT c.provider, c.endpoint, c.cost_micros, c.reservation_id "
                    "FROM llm_calls c JOIN steps s ON s.id = c.step_id "
                    "WHERE s.name = :n ORDER BY c.created_at"
                ),
                {"n": name},
            ).all()
            reserved = conn.execute(
                text(
                    "SELECT count(*) FROM reservations r JOIN steps s ON s.id = r.step_id "
                    "WHERE s.name = :n AND r.label LIKE '%tokens=%'"
                ),
                {"n": name},
            ).scalar_one()
    finally:
        engine.dispose()
    return [tuple(c) for c in calls], int(reserved)


EXPECTED_CALLS = [
    ("anthropic", "count_tokens", 0, None),
    ("openai", "models", 0, None),
    ("openai", "models", 0, None),
    ("anthropic", "models", 0, None),
]


def _check(run_stdout: str, stack_env: dict[str, str], name: str) -> None:
    assert run_stdout.splitlines() == [
        "True True gpt-4o-mini model True",
        "refused 400 max_tokens True",
    ]
    calls, reserved = _ledger(stack_env, name)
    assert calls == EXPECTED_CALLS
    assert reserved == 0


def test_free_calls_and_the_output_limit_against_the_provider(
    kernel: Kernel, fake: FakeProvider, stack_env: dict[str, str]
) -> None:
    name = f"free-{uuid.uuid4().hex[:8]}"
    before = len(fake.requests)
    run = kernel.run(CELL.format(name=name))
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    _check(run.stdout, stack_env, name)
    sent = [(r.method, r.path.split("?")[0]) for r in fake.requests[before:]]
    assert sent == [
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-4o-mini"),
        ("GET", "/v1/models"),
    ]  # the over-limit call never left the host
    assert "OutputLimitExceeded: max_tokens=100000 is above gpt-4o-mini's output limit" in (
        run.stderr
    )


def test_free_calls_and_the_output_limit_with_the_mock(
    make_kernel: Callable[..., Kernel], stack_env: dict[str, str]
) -> None:
    kernel = make_kernel({"WFLO_PROVIDER": "mock"})
    name = f"free-mock-{uuid.uuid4().hex[:8]}"
    run = kernel.run(CELL.format(name=name))
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    _check(run.stdout, stack_env, name)
