"""``%%wflo --estimate`` (a dry run: placeholders, worst cases, nothing sent or spent) and
``%config WfloMagics.confirm_above`` (a call above it waits for the analyst's answer on
the kernel's stdin channel), in a real kernel against the real engines and the fake
provider (whose request count says whether a provider was contacted)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.fakes.providers import FakeProvider
from tests.kernel_driver import Kernel, loaded_kernel
from tests.marks import LLM_KERNEL
from wflo_jupyter.core.estimates import PLACEHOLDER_MARK
from wflo_jupyter.ledger.store import Ledger

pytestmark = LLM_KERNEL

TABLES = ("steps", "reservations", "llm_calls", "budgets", "compute_charges", "outbox")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel(stack_env: dict[str, str], runtime_image: str, fake: FakeProvider) -> Iterator[Kernel]:
    env = {
        "OPENAI_API_KEY": "sk-host-secret",
        "ANTHROPIC_API_KEY": "sk-ant-host-secret",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
        "WFLO_ANTHROPIC_BASE_URL": fake.url,
    }
    with loaded_kernel(env) as k:
        warm = k.run("%%wflo\nprint('warm')")  # engines up, the notebook budget exists
        assert warm.stdout == "warm\n", warm.stderr
        yield k


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Iterator[Ledger]:
    opened = Ledger.connect(database_url, create=False, migrate=False)
    yield opened
    opened.close()


def _counts(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        return {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in TABLES
        }


def _held(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM reservations WHERE state = 'held'"))
        return int(held.scalar() or 0)


def _worst(kernel: Kernel, provider: str, endpoint: str, bodies: list[str]) -> str:
    """The kernel's own worst case of ``bodies`` (Python literals), summed, as shown."""
    run = kernel.run(
        "from wflo_jupyter.core.money import format_usd\n"
        "_p = get_ipython().find_magic('wflo').__self__.session.gateway.prices\n"
        f"print(format_usd(sum(_p.worst_case({provider!r}, b['model'], b, endpoint={endpoint!r})"
        f".micros for b in [{', '.join(bodies)}])))"
    )
    assert run.status == "ok", run.error
    return run.stdout.strip()


def test_estimate_prices_every_call_and_sends_nothing(
    kernel: Kernel, fake: FakeProvider, ledger: Ledger
) -> None:
    marker = uuid.uuid4().hex[:8]
    user = f"[{{'role': 'user', 'content': 'dry {marker}'}}]"
    code = (
        "%%wflo --estimate --budget 0.0001 --name dry-run\n"
        "from openai import OpenAI\n"
        "from anthropic import Anthropic\n"
        "client, claude = OpenAI(max_retries=0), Anthropic(max_retries=0)\n"
        f"r = client.chat.completions.create(model='gpt-4o-mini', max_tokens=50, messages={user})\n"
        "print(r.choices[0].message.content)\n"
        "s = client.chat.completions.create(model='gpt-4o-mini', max_tokens=50, stream=True,\n"
        f"    messages={user})\n"
        "print(''.join(c.choices[0].delta.content or '' for c in s if c.choices))\n"
        f"print(client.responses.create(model='gpt-4o', input='dry {marker}',"
        " max_output_tokens=100).output_text)\n"
        "e = client.embeddings.create(model='text-embedding-3-small', input=['a', 'b'])\n"
        "print('vectors', len(e.data))\n"
        f"m = claude.messages.create(model='claude-haiku-4-5', max_tokens=40, messages={user})\n"
        "print(m.content[0].text)\n"
        "with claude.messages.stream(model='claude-haiku-4-5', max_tokens=40,\n"
        f"        messages={user}) as st:\n"
        "    print(st.get_final_text())\n"
        "u = client.chat.completions.create(model='no-price-model-x', max_tokens=10,\n"
        f"    messages={user})\n"
        "print(u.choices[0].message.content)\n"
        "print('dry', 'x' in globals())\n"
        "x = 1\n"
    )
    requests, rows = len(fake.requests), _counts(ledger)
    run = kernel.run(code)
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    assert len(fake.requests) == requests  # no provider was contacted
    assert _counts(ledger) == rows  # no step, reservation, call, budget or event recorded
    out = run.stdout.splitlines()
    answers = [out[i] for i in (0, 1, 2, 4, 5, 6)]
    assert all(a.startswith(PLACEHOLDER_MARK) for a in answers), out
    assert "sent nothing to gpt-4o-mini" in out[0] and "at most $" in out[0]
    assert "no price is known" in out[6]
    assert out[3] == "vectors 2"
    assert out[7] == "dry False"  # a throwaway sandbox
    report = out[8:]
    assert report[0].startswith("[wflo] estimate (dry run: no provider was called")
    headline = re.fullmatch(
        r"this cell would make 7 calls, worst case at least (\$[\d.]+) "
        r"\(no price known for no-price-model-x\)",
        report[1],
    )
    assert headline, report
    by_model = {line.split(":")[0].strip(): line for line in report[2:7]}
    chat = f"{{'model': 'gpt-4o-mini', 'max_tokens': 50, 'messages': {user}}}"
    stream = chat[:-1] + ", 'stream': True}"
    mini = _worst(kernel, "openai", "chat", [chat, stream])
    assert by_model["gpt-4o-mini"] == f"  gpt-4o-mini: 2 calls, worst case {mini}"
    assert by_model["gpt-4o"].startswith("  gpt-4o: 1 call, worst case $")
    assert by_model["text-embedding-3-small"].startswith("  text-embedding-3-small: 1 call, worst")
    assert by_model["claude-haiku-4-5"].startswith("  claude-haiku-4-5: 2 calls, worst case $")
    assert by_model["no-price-model-x"] == (
        "  no-price-model-x: 1 call, no price known (set one with %config WfloMagics.prices)"
    )
    assert report[-1] == (
        "the worst case is above the cell budget $0.0001: calls past it would be refused"
    )
    after = kernel.run("%%wflo\nprint('x' in globals())")
    assert after.stdout == "False\n"  # the kernel's sandbox never saw the dry run


def test_estimate_says_which_calls_the_cache_would_answer(
    kernel: Kernel, fake: FakeProvider, ledger: Ledger
) -> None:
    marker = uuid.uuid4().hex[:8]

    def call(word: str) -> str:
        return (
            "print(OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
            f"    messages=[{{'role': 'user', 'content': '{word} {marker}'}}])"
            ".choices[0].message.content)\n"
        )

    real = kernel.run("%%wflo\nfrom openai import OpenAI\n" + call("cached"))
    assert real.stdout == f"echo: cached {marker}\n", real.stderr
    requests, rows = len(fake.requests), _counts(ledger)
    dry = kernel.run(
        "%%wflo --estimate\nfrom openai import OpenAI\n" + call("cached") + call("new")
    )
    assert dry.status == "ok", dry.error
    assert len(fake.requests) == requests and _counts(ledger) == rows
    assert dry.stdout.splitlines()[0].startswith(PLACEHOLDER_MARK)  # even for the cached one
    assert "this cell would make 2 calls, worst case $" in dry.stdout
    assert "1 of them would be answered from the cache at $0" in dry.stdout


CONFIRM_CELL = (
    "%%wflo --no-cache --name {name}\n"
    "import openai\n"
    "client = openai.OpenAI(max_retries=0)\n"
    "small = client.chat.completions.create(model='gpt-4o-mini', max_tokens=10,\n"
    "    messages=[{{'role': 'user', 'content': 'small {name}'}}])\n"
    "print(small.choices[0].message.content)\n"
    "try:\n"
    "    big = client.chat.completions.create(model='gpt-4o-mini', max_tokens=800,\n"
    "        messages=[{{'role': 'user', 'content': 'big {name}'}}])\n"
    "    print(big.choices[0].message.content)\n"
    "except openai.APIStatusError as exc:\n"
    "    print('refused', exc.status_code)\n"
)


@pytest.fixture
def confirming(kernel: Kernel) -> Iterator[Kernel]:
    """confirm_above $0.0001: the 800-token call is above it, the 10-token call is not."""
    assert kernel.run("%config WfloMagics.confirm_above = 0.0001").status == "ok"
    yield kernel
    assert kernel.run("%config WfloMagics.confirm_above = None").status == "ok"


def _step(kernel: Kernel, name: str) -> list[str]:
    run = kernel.run(
        "rows = get_ipython().find_magic('wflo').__self__.session.report_rows()\n"
        f"row = [r for r in rows if r.name == {name!r}][0]\n"
        "print(row.calls, row.llm_cost_micros > 0)"
    )
    return run.stdout.split()


def test_confirm_above_refuses_in_a_run_without_stdin(
    confirming: Kernel, fake: FakeProvider, ledger: Ledger
) -> None:
    name = f"no-stdin-{uuid.uuid4().hex[:8]}"
    requests = len(fake.requests)
    run = confirming.run(CONFIRM_CELL.format(name=name))  # allow_stdin=False, as nbclient
    assert run.status == "ok", run.error
    assert run.stdout == f"echo: small {name}\nrefused 403\n"
    assert len(fake.requests) == requests + 1  # only the call below the threshold
    refusals = [line for line in run.stderr.splitlines() if "CallNotConfirmed" in line]
    assert len(refusals) == 1, run.stderr
    assert refusals[0].startswith(
        "[wflo] CallNotConfirmed: gpt-4o-mini, max_tokens=800: may cost up to $"
    )
    line = refusals[0]
    assert "above WfloMagics.confirm_above $0.0001, and this run cannot ask (no stdin)" in line
    assert line.endswith("allow it with %config WfloMagics.confirm_above = 0.01 (or None)")
    assert _step(confirming, name) == ["1", "True"]  # the refused call cost nothing
    assert _held(ledger) == 0


@pytest.mark.parametrize("answer", ["y", "n"])
def test_confirm_above_asks_in_the_cell_and_reserves_only_after_a_yes(
    confirming: Kernel, fake: FakeProvider, ledger: Ledger, answer: str
) -> None:
    name = f"ask-{answer}-{uuid.uuid4().hex[:8]}"
    requests = len(fake.requests)
    held_when_asked: list[int] = []

    def reply(prompt: str) -> str:
        held_when_asked.append(_held(ledger))
        return answer

    run = confirming.run(CONFIRM_CELL.format(name=name), answer=reply)  # allow_stdin=True
    assert run.status == "ok", (run.error, run.stderr)
    assert len(run.prompts) == 1
    assert re.fullmatch(
        r"\[wflo\] gpt-4o-mini, max_tokens=800: this call may cost up to \$[\d.]+, "
        r"above confirm_above \$0\.0001\. Send it\? \[y/N\] ",
        run.prompts[0],
    ), run.prompts
    assert held_when_asked == [0]  # nothing reserved while asking
    sent = answer == "y"
    big = f"echo: big {name}" if sent else "refused 403"
    assert run.stdout == f"echo: small {name}\n{big}\n"
    assert len(fake.requests) == requests + (2 if sent else 1)
    assert _step(confirming, name) == ["2" if sent else "1", "True"]  # settled in the ledger
    assert _held(ledger) == 0
    refusals = [line for line in run.stderr.splitlines() if "CallNotConfirmed" in line]
    if sent:
        assert refusals == [], run.stderr
    else:
        assert len(refusals) == 1, run.stderr
        assert refusals[0].startswith(
            "[wflo] CallNotConfirmed: gpt-4o-mini, max_tokens=800: not confirmed (it may cost"
        )
        assert refusals[0].endswith("); nothing was sent or spent")
