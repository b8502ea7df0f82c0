"""LLM calls from unchanged SDK code in a ``%%wflo`` cell, end to end: agent proxy →
channel → host gateway (budgets, Redis cache, ledger) → the provider's HTTP endpoint
(the fake server: the only stand-in in the suite)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.providers import FakeProvider
from tests.helpers import PrivateRedis, wait_until
from tests.kernel_driver import Kernel
from tests.marks import LLM_KERNEL

pytestmark = LLM_KERNEL

SECRET = "sk-host-secret"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    yield server
    server.close()


def _env(fake: FakeProvider) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": SECRET,
        "ANTHROPIC_API_KEY": "sk-ant-host-secret",
        "WFLO_OPENAI_BASE_URL": fake.base_url,
        "WFLO_ANTHROPIC_BASE_URL": fake.url,
    }


@pytest.fixture(scope="module")
def kernel_env(fake: FakeProvider) -> dict[str, str]:
    """The module's ``kernel`` (``conftest.py``) calls the fake provider."""
    return _env(fake)


def test_sdk_calls_answered_cached_and_reported(kernel: Kernel, fake: FakeProvider) -> None:
    marker = uuid.uuid4().hex[:8]
    code = (
        "%%wflo --budget 0.10 --name llm-sync\n"
        "from openai import OpenAI\n"
        "client = OpenAI()\n"
        "for _ in range(2):\n"
        "    reply = client.chat.completions.create(model='gpt-4o-mini', max_tokens=50,\n"
        f"        messages=[{{'role': 'user', 'content': 'hello {marker}'}}])\n"
        "    print(reply.choices[0].message.content)\n"
    )
    before = len(fake.requests)
    run = kernel.run(code)
    assert run.status == "ok", run.error
    assert run.stdout == f"echo: hello {marker}\necho: hello {marker}\n"
    assert len(fake.requests) == before + 1  # the second call was a cache hit
    assert fake.requests[-1].headers["authorization"] == f"Bearer {SECRET}"  # key added on the host
    report = kernel.run("%wflo report")
    html = "".join(d.get("text/html", "") for d in report.data)
    assert "llm-sync" in html
    frame = kernel.run(
        "f = get_ipython().find_magic('wflo').__self__.session.report_rows()\n"
        "row = [r for r in f if r.name == 'llm-sync'][0]\n"
        "print(row.calls, row.cached_calls, row.cost_micros > 0, row.saved_micros > 0)"
    )
    assert frame.stdout.split() == ["2", "1", "True", "True"]


def test_streaming_async_and_anthropic(kernel: Kernel, fake: FakeProvider) -> None:
    marker = uuid.uuid4().hex[:8]
    code = (
        "%%wflo --name llm-mixed\n"
        "import asyncio\n"
        "from openai import OpenAI, AsyncOpenAI\n"
        "from anthropic import Anthropic\n"
        f"stream = OpenAI().chat.completions.create(model='gpt-4o-mini', stream=True, max_tokens=30,\n"
        f"    messages=[{{'role': 'user', 'content': 'stream {marker}'}}])\n"
        "print(''.join(c.choices[0].delta.content or '' for c in stream if c.choices))\n"
        "async def main():\n"
        "    client = AsyncOpenAI()\n"
        "    replies = await asyncio.gather(*[client.chat.completions.create(model='gpt-4o-mini',\n"
        f"        max_tokens=20, messages=[{{'role': 'user', 'content': f'async {marker} {{i}}'}}]) for i in range(3)])\n"
        "    await client.close()\n"
        "    return [r.choices[0].message.content for r in replies]\n"
        "print(asyncio.run(main()))\n"
        "message = Anthropic().messages.create(model='claude-haiku-4-5', max_tokens=40,\n"
        f"    messages=[{{'role': 'user', 'content': 'claude {marker}'}}])\n"
        "print(message.content[0].text)\n"
        "with Anthropic().messages.stream(model='claude-haiku-4-5', max_tokens=40,\n"
        f"        messages=[{{'role': 'user', 'content': 'claude stream {marker}'}}]) as s:\n"
        "    print(s.get_final_text())\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", (run.error, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    assert lines[0] == f"echo: stream {marker}"
    assert lines[1] == str([f"echo: async {marker} {i}" for i in range(3)])
    assert lines[2] == f"echo: claude {marker}"
    assert lines[3] == f"echo: claude stream {marker}"
    assert fake.requests[-1].headers["x-api-key"] == "sk-ant-host-secret"


def test_over_budget_call_is_refused_before_the_provider(
    kernel: Kernel, fake: FakeProvider
) -> None:
    before = len(fake.requests)
    code = (
        "%%wflo --budget 0.000001 --name over-budget\n"
        "import openai\n"
        "try:\n"
        "    openai.OpenAI(max_retries=0).chat.completions.create(model='gpt-4o-mini', max_tokens=800,\n"
        "        messages=[{'role': 'user', 'content': 'too expensive'}])\n"
        "except openai.APIStatusError as exc:\n"
        "    print('refused', exc.status_code)\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", run.error
    assert run.stdout == "refused 402\n"
    assert "BudgetExceeded: cell budget $0.000001 — spent $0.00, reserved $0.00" in run.stderr
    assert "(gpt-4o-mini, max_tokens=800)" in run.stderr
    assert len(fake.requests) == before  # the provider was never contacted
    assert kernel.run("%%wflo\nprint('carries on')").stdout == "carries on\n"


def test_host_key_is_unreachable_from_the_cell(kernel: Kernel) -> None:
    code = (
        "%%wflo\n"
        "import glob, os, openai\n"
        "found = [k for k, v in os.environ.items() if 'sk-host-secret' in v]\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        found += [path] if b'sk-host-secret' in open(path, 'rb').read() else []\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    openai.OpenAI(max_retries=0).chat.completions.create(model='no-such-model-xyz',\n"
        "        messages=[{'role': 'user', 'content': 'x'}])\n"
        "except openai.APIStatusError as exc:\n"
        "    found += ['error'] if 'sk-host-secret' in str(exc) else []\n"
        "print('found', found, os.environ['OPENAI_API_KEY'].startswith('wflo-sandbox-'))\n"
    )
    run = kernel.run(code)
    assert run.stdout == "found [] True\n", (run.stdout, run.stderr[-1500:])
    assert SECRET not in run.stdout + run.stderr


def test_single_flight_across_two_kernels(
    make_kernel: Callable[..., Kernel], fake: FakeProvider, kernel: Kernel
) -> None:
    other = make_kernel(_env(fake))
    try:
        assert other.run("%%wflo\nprint('warm')").stdout == "warm\n"
        kernel.run("%%wflo\nprint('warm')")
        fake.state.delay_s = 1.0
        marker = uuid.uuid4().hex
        code = (
            "%%wflo --timeout 120\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from openai import OpenAI\n"
            "def ask(_):\n"
            "    return OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
            f"        messages=[{{'role': 'user', 'content': 'together {marker}'}}]).choices[0].message.content\n"
            "with ThreadPoolExecutor(10) as pool:\n"
            "    print(set(pool.map(ask, range(10))))\n"
        )
        before = len(fake.requests)
        first, second = kernel.submit(code), other.submit(code)
        runs = [kernel.collect(first, 300), other.collect(second, 300)]
    finally:
        fake.state.delay_s = 0.0
        other.close()
    for run in runs:
        assert run.stdout == f"{{'echo: together {marker}'}}\n", (run.stdout, run.stderr[-1500:])
    assert len(fake.requests) == before + 1


def test_redis_outage_mid_notebook(
    make_kernel: Callable[..., Kernel], fake: FakeProvider, tmp_path: Path
) -> None:
    """Redis stopped mid-notebook: calls go on (budgeted, recorded) after one warning;
    Redis back: caching resumes."""
    server = PrivateRedis(tmp_path)
    server.start()
    marker = uuid.uuid4().hex[:8]
    cell = (
        "%%wflo --name outage\n"
        "from openai import OpenAI\n"
        "print(OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=20,\n"
        f"    messages=[{{'role': 'user', 'content': 'outage {marker}'}}]).choices[0].message.content)\n"
    )
    try:
        k = make_kernel({**_env(fake), "WFLO_REDIS_URL": server.url})
        start = len(fake.requests)
        assert k.run(cell).stdout == f"echo: outage {marker}\n"
        assert k.run(cell).stdout == f"echo: outage {marker}\n"
        assert len(fake.requests) == start + 1  # cached
        server.stop()
        down = [k.run(cell), k.run(cell)]
        assert [r.stdout for r in down] == [f"echo: outage {marker}\n"] * 2
        assert len(fake.requests) == start + 3  # straight to the provider
        server.start()  # same port, empty: the next call refills the cache

        def cache_sees_redis() -> bool:  # it re-probes a Redis it saw down once a second
            stats = "".join(d.get("text/html", "") for d in k.run("%wflo cache stats").data)
            return "LLM cache" in stats and "Redis is unreachable" not in stats

        wait_until(cache_sees_redis, 30, interval=0.2, what="the kernel's cache to see Redis")
        assert k.run(cell).stdout == f"echo: outage {marker}\n"
        assert k.run(cell).stdout == f"echo: outage {marker}\n"
        assert len(fake.requests) == start + 4  # caching resumed
        rows = k.run(
            "rows = get_ipython().find_magic('wflo').__self__.session.report_rows()\n"
            "print(sum(r.calls for r in rows if r.name == 'outage'),"
            " sum(r.cached_calls for r in rows if r.name == 'outage'))"
        )
        assert rows.stdout.split() == ["6", "2"]  # every call was recorded
        k.close()  # unloaded while its Redis still runs
    finally:
        server.stop()


def test_cache_stats_clear_and_price_overrides(kernel: Kernel, fake: FakeProvider) -> None:
    marker = uuid.uuid4().hex[:8]
    model = f"my-model-{marker}"
    cell = (
        "%%wflo\n"
        "from openai import OpenAI\n"
        f"OpenAI().chat.completions.create(model='{model}', max_tokens=10,\n"
        f"    messages=[{{'role': 'user', 'content': 'priced {marker}'}}])\n"
        "print('ok')\n"
    )
    unknown = kernel.run(cell)
    assert model in unknown.stderr + unknown.stdout + unknown.error_line
    kernel.run(f"%config WfloMagics.prices = {{'{model}': {{'input': 1.0, 'output': 2.0}}}}")
    first = kernel.run(cell)
    assert first.stdout == "ok\n", (first.stderr[-1500:], first.error)
    second = kernel.run(cell)
    assert f"[wflo] cache hit: {model} answered at $0, saved $0.0" in second.notices
    assert "cache hit" not in second.stderr  # a notice, not an error
    stats = "".join(d.get("text/html", "") for d in kernel.run("%wflo cache stats").data)
    assert "hits" in stats and "saved" in stats
    cleared = kernel.run(f"%wflo cache clear --model {model}")
    assert f"removed 1 cached answer(s) of {model}" in cleared.notices
    before = len(fake.requests)
    assert kernel.run(cell).stdout == "ok\n"
    assert len(fake.requests) == before + 1  # the cleared answer was fetched again
    mine = kernel.run("%wflo cache clear --notebook")  # this notebook stored that answer
    removed = re.search(r"removed (\d+) cached answer\(s\) stored by ", mine.notices)
    assert removed, mine.notices + mine.stderr
    assert int(removed.group(1)) >= 1  # (and what the module's earlier cells stored)
    assert kernel.run(cell).stdout == "ok\n"
    assert len(fake.requests) == before + 2
    bad = kernel.run("%config WfloMagics.prices = {'m': {'input': 'cheap'}}")
    after = kernel.run("%%wflo\nprint(1)")
    assert "UsageError" in after.stderr and "m" in after.stderr
    kernel.run("%config WfloMagics.prices = {}")
    assert bad.status in ("ok", "error")


def test_a_clear_in_another_kernel_reaches_this_kernels_near_cache(
    make_kernel: Callable[..., Kernel], fake: FakeProvider, kernel: Kernel
) -> None:
    """This kernel answers a repeated call from its in-memory near cache; another kernel
    clears the model's answers; this kernel's next identical call goes to the provider
    again (Redis's invalidation push dropped its copy)."""
    marker = uuid.uuid4().hex[:8]
    model = "gpt-4o"
    cell = (
        "%%wflo\n"
        "from openai import OpenAI\n"
        f"print(OpenAI().chat.completions.create(model='{model}', max_tokens=10,\n"
        f"    messages=[{{'role': 'user', 'content': 'near {marker}'}}]).choices[0].message.content)\n"
    )
    served = (
        "near = get_ipython().find_magic('wflo').__self__.session.cache.near\n"
        "print(near.served if near.wait_armed(5) else 'feed down')"
    )
    before = len(fake.requests)
    assert kernel.run(cell).stdout == f"echo: near {marker}\n"
    for _ in range(3):  # Redis read (the store's own push may drop it once), then memory
        assert kernel.run(cell).stdout == f"echo: near {marker}\n"
    assert len(fake.requests) == before + 1
    from_memory = int(kernel.run(served).stdout)
    assert kernel.run(cell).stdout == f"echo: near {marker}\n"
    assert int(kernel.run(served).stdout) == from_memory + 1  # this hit made no Redis read
    stats = kernel.run("%wflo cache stats").text
    assert re.search(
        rf"^this kernel's hits answered from memory +{from_memory + 1}$", stats, re.M
    ), stats
    other = make_kernel(_env(fake))
    cleared = other.run(f"%wflo cache clear --model {model}")
    assert f"of {model}" in cleared.notices, cleared.notices + cleared.stderr
    other.close()
    assert kernel.run(cell).stdout == f"echo: near {marker}\n"
    assert len(fake.requests) == before + 2  # the cleared answer was fetched again


def _notices(run: object) -> list[str]:
    """wflo's notice lines of a cell, wherever the front end shows them (stderr lines or
    display data), without the ``[wflo] `` prefix."""
    lines = run.stderr.splitlines()  # type: ignore[attr-defined]
    for data in run.data:  # type: ignore[attr-defined]
        lines += str(data.get("text/plain", "")).splitlines()
    return [line.removeprefix("[wflo] ") for line in lines if "budget crossed" in line]


def test_llm_spend_announces_each_threshold_once(
    make_kernel: Callable[..., Kernel], fake: FakeProvider
) -> None:
    """Calls whose real cost is known exactly (input free, $1000 per million output tokens,
    the output capped by max_tokens: N tokens cost N x $0.001) walk a $0.01 cell budget and
    a $0.02 notebook budget through 50/75/90/100%; each crossing is said once, in the
    cell whose call crossed it."""
    model = f"threshold-model-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex[:8]
    kernel = make_kernel(_env(fake))
    kernel.run(f"%config WfloMagics.prices = {{'{model}': {{'input': 0, 'output': 1000}}}}")
    assert kernel.run("%wflo budget 0.02").status == "ok"
    cells = []
    for cell in range(2):
        code = (
            "%%wflo --budget 0.01\n"
            "from openai import OpenAI\n"
            "client = OpenAI()\n"
            "for i, tokens in enumerate([5, 3, 1, 1]):\n"
            f"    client.chat.completions.create(model='{model}', max_tokens=tokens,\n"
            f"        messages=[{{'role': 'user', 'content': 'many words to cap {marker} {cell} ' + str(i) + ' x' * 20}}])\n"
            "print('spent')\n"
        )
        run = kernel.run(code)
        assert run.status == "ok", (run.error, run.stderr[-2000:])
        cells.append(_notices(run))
    first, second = cells
    cell_lines = [f"cell budget crossed {t}%" for t in (50, 75, 90, 100)]
    for notices in cells:  # every cell walks its own cell budget: each threshold once
        assert [n.split(":")[0] for n in notices if n.startswith("cell")] == cell_lines
    assert [n.split(":")[0] for n in first if n.startswith("notebook")] == [
        "notebook budget crossed 50%"
    ]
    assert [n.split(":")[0] for n in second if n.startswith("notebook")] == [
        f"notebook budget crossed {t}%" for t in (75, 90, 100)
    ]
    assert "cell budget crossed 100%: $0.01 of $0.01" in first
    assert "notebook budget crossed 100%: $0.02 of $0.02" in second


def test_a_cell_that_calls_a_model_shows_a_compact_meter(kernel: Kernel) -> None:
    marker = uuid.uuid4().hex[:8]
    code = (
        "%%wflo --budget 0.05 --name metered\n"
        "from openai import OpenAI\n"
        "OpenAI().chat.completions.create(model='gpt-4o-mini', max_tokens=5,\n"
        f"    messages=[{{'role': 'user', 'content': 'meter {marker}'}}])\n"
    )
    run = kernel.run(code)
    assert run.status == "ok", run.error
    widgets = [d for d in run.data if "application/vnd.jupyter.widget-view+json" in d]
    assert len(widgets) == 1
    assert "[wflo] cell budget: $0." in widgets[0]["text/plain"]
    assert "[wflo] cell metered: $0." in widgets[0]["text/plain"]
    plain = kernel.run("%%wflo --name no-llm\nprint(1)")
    assert not [d for d in plain.data if "application/vnd.jupyter.widget-view+json" in d]
    kernel.run("%config WfloMagics.show_meter = False")
    try:
        quiet = kernel.run(code.replace(marker, marker + "-quiet"))
        assert quiet.status == "ok", quiet.error
        assert not [d for d in quiet.data if "application/vnd.jupyter.widget-view+json" in d]
    finally:
        kernel.run("%config WfloMagics.show_meter = True")
