"""The gateway against an OpenAI-compatible server nobody here wrote: LiteLLM's proxy
(its own environment, offline ``mock_response`` models; ``tests/thirdparty/``), driven
the way the product runs: the official ``openai`` SDK, unchanged, in ``%%wflo`` cells of
a real kernel whose host points ``WFLO_OPENAI_BASE_URL`` at the proxy.

Nothing here is tuned to the project's fake provider: LiteLLM chooses the ids, the usage
(fixed 10/20 tokens for a mocked completion, counted by its own tokenizer for a mocked
stream) and, through its callback, says what it charged by its own cost map; the ledger
must agree with it. Requests LiteLLM received are counted in its access log."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.helpers import wait_until
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL
from tests.thirdparty.litellm_proxy import CHAT_REPLY, EMBEDDING, MASTER_KEY, LiteLLMProxy

pytestmark = LLM_KERNEL

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="session")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    proxy = LiteLLMProxy(tmp_path_factory.mktemp("litellm"))
    print(f"LiteLLM proxy ready in {proxy.start_seconds:.1f} s, {proxy.rss_mib:.0f} MiB RSS")
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def kernel_env(litellm: LiteLLMProxy) -> dict[str, str]:
    """The module's ``kernel`` (``conftest.py``): its host's OpenAI route is the proxy."""
    return {"OPENAI_API_KEY": MASTER_KEY, "WFLO_OPENAI_BASE_URL": litellm.base_url}


def _calls(database_url: str, step: str) -> list[dict[str, Any]]:
    """The ledger's llm_calls rows of the step named ``step``, oldest first."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.model, c.endpoint, c.input_tokens, c.output_tokens, c.cost_micros,"
                    " c.saved_micros, c.cached, c.simulated FROM llm_calls c"
                    " JOIN steps s ON s.id = c.step_id WHERE s.name = :name"
                    " ORDER BY c.created_at"
                ),
                {"name": step},
            )
            return [dict(r) for r in rows.mappings()]
    finally:
        engine.dispose()


def _recorded(litellm: LiteLLMProxy, count: int) -> list[dict[str, Any]]:
    """LiteLLM's own record of the calls it answered, once it holds ``count`` of them (its
    callback runs after the answer is sent)."""
    return wait_until(
        lambda: len(litellm.calls()) >= count and litellm.calls(),
        15,
        what=f"LiteLLM's callback to record {count} call(s)",
    )


def _litellm_micros(call: dict[str, Any]) -> int:
    """What LiteLLM charged for ``call`` (its own cost map, in dollars), rounded up to a
    whole micro-dollar as the ledger rounds."""
    return math.ceil(call["response_cost"] * 1_000_000 - 1e-6)


def _cell(kernel: Kernel, kind: str, body: str, budget: str = "0.05") -> tuple[str, Any]:
    """Run ``body`` as a ``%%wflo`` cell named ``lite-KIND-xxxxxx`` (``NAME`` in ``body``
    becomes that name: prompts differ from run to run); returns the name and the run."""
    name = f"lite-{kind}-{uuid.uuid4().hex[:6]}"
    run = kernel.run(f"%%wflo --budget {budget} --name {name}\n" + body.replace("NAME", name))
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    return name, run


def test_chat_answered_and_priced_as_litellm_reported(
    kernel: Kernel, litellm: LiteLLMProxy, database_url: str
) -> None:
    before, seen = litellm.requests(CHAT), len(litellm.calls())
    name, run = _cell(
        kernel,
        "chat",
        "from openai import OpenAI\n"
        "reply = OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=50,\n"
        "    messages=[{'role': 'user', 'content': 'hello NAME'}])\n"
        "print(reply.choices[0].message.content, reply.usage.prompt_tokens,"
        " reply.usage.completion_tokens, reply.id)\n",
    )
    text_, prompt, completion, reply_id = run.stdout.rsplit(" ", 3)
    assert text_ == CHAT_REPLY
    assert litellm.requests(CHAT) == before + 1
    litellm_call = _recorded(litellm, seen + 1)[seen]
    assert litellm_call["id"] == reply_id.strip()
    assert (int(prompt), int(completion)) == (10, 20)  # LiteLLM's mock usage, not a count
    (row,) = _calls(database_url, name)
    assert (row["input_tokens"], row["output_tokens"]) == (10, 20)
    assert row["model"] == "gpt-4o-mini" and not row["cached"] and not row["simulated"]
    # priced as gpt-4o-mini: the ledger's own prices agree with LiteLLM's cost map
    assert row["cost_micros"] > 0
    assert row["cost_micros"] == _litellm_micros(litellm_call)


def test_streamed_chat_assembled_and_recorded(
    kernel: Kernel, litellm: LiteLLMProxy, database_url: str
) -> None:
    seen = len(litellm.calls())
    name, run = _cell(
        kernel,
        "stream",
        "from openai import OpenAI\n"
        "stream = OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=40,\n"
        "    stream=True, stream_options={'include_usage': True},\n"
        "    messages=[{'role': 'user', 'content': 'stream NAME'}])\n"
        "chunks = list(stream)\n"
        "usage = [c.usage for c in chunks if c.usage][-1]\n"
        "print(''.join(c.choices[0].delta.content or '' for c in chunks if c.choices))\n"
        "print(len(chunks), usage.prompt_tokens, usage.completion_tokens)\n",
    )
    reply, counts = run.stdout.splitlines()
    assert reply == CHAT_REPLY
    chunks, prompt, completion = map(int, counts.split())
    assert chunks > 2  # relayed as a stream, not as one body
    litellm_call = _recorded(litellm, seen + 1)[seen]
    assert litellm_call["stream"] is True
    assert (prompt, completion) == (
        litellm_call["prompt_tokens"],
        litellm_call["completion_tokens"],
    )
    (row,) = _calls(database_url, name)
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion)
    assert row["cost_micros"] == _litellm_micros(litellm_call)
    assert row["cost_micros"] > 0


def test_identical_call_served_from_the_cache_at_zero(
    kernel: Kernel, litellm: LiteLLMProxy, database_url: str
) -> None:
    before = litellm.requests(CHAT)
    name, run = _cell(
        kernel,
        "cache",
        "from openai import OpenAI\n"
        "client = OpenAI()\n"
        "for _ in range(2):\n"
        "    reply = client.chat.completions.create(model='gpt-4o-mini', max_tokens=30,\n"
        "        messages=[{'role': 'user', 'content': 'twice NAME'}])\n"
        "    print(reply.id, reply.choices[0].message.content)\n",
    )
    first, second = run.stdout.splitlines()
    assert first == second  # LiteLLM makes a new id per answer: this one was replayed
    assert first.endswith(CHAT_REPLY)
    assert litellm.requests(CHAT) == before + 1
    assert "cache hit: gpt-4o-mini answered at $0" in run.notices
    paid, hit = wait_until(lambda: len(rows := _calls(database_url, name)) == 2 and rows, 15)
    assert not paid["cached"] and paid["cost_micros"] > 0
    assert hit["cached"] and hit["cost_micros"] == 0
    assert hit["saved_micros"] == paid["cost_micros"]


def test_over_budget_call_is_refused_before_litellm(
    kernel: Kernel, litellm: LiteLLMProxy, database_url: str
) -> None:
    before = litellm.requests(CHAT)
    name, run = _cell(
        kernel,
        "over",
        "import openai\n"
        "try:\n"
        "    openai.OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini',\n"
        "        max_tokens=800, messages=[{'role': 'user', 'content': 'too dear'}])\n"
        "except openai.APIStatusError as exc:\n"
        "    print('refused', exc.status_code)\n",
        budget="0.000001",
    )
    assert run.stdout == "refused 402\n"
    assert "BudgetExceeded: cell budget $0.000001" in run.stderr
    assert litellm.requests(CHAT) == before  # LiteLLM never saw it
    assert _calls(database_url, name) == []


def test_embeddings_answered_and_priced(
    kernel: Kernel, litellm: LiteLLMProxy, database_url: str
) -> None:
    before, seen = litellm.requests("/v1/embeddings"), len(litellm.calls())
    name, run = _cell(
        kernel,
        "embed",
        "from openai import OpenAI\n"
        "out = OpenAI().embeddings.create(model='text-embedding-3-small', input='embed NAME')\n"
        "print(out.data[0].embedding, out.usage.prompt_tokens)\n",
    )
    assert run.stdout == f"{EMBEDDING} 10\n"
    assert litellm.requests("/v1/embeddings") == before + 1
    litellm_call = _recorded(litellm, seen + 1)[seen]
    assert litellm_call["call_type"] == "aembedding"
    (row,) = _calls(database_url, name)
    assert (row["input_tokens"], row["output_tokens"]) == (10, 0)
    assert row["cost_micros"] == _litellm_micros(litellm_call)
    assert row["cost_micros"] > 0


def test_the_proxy_rejects_any_other_key(litellm: LiteLLMProxy) -> None:
    """The proxy really checks keys: the gateway's answers above came with the host key."""
    answer = httpx.post(
        f"{litellm.base_url}/chat/completions",
        headers={"authorization": "Bearer wflo-sandbox-token"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert answer.status_code in (400, 401), answer.text
    assert CHAT_REPLY not in answer.text
