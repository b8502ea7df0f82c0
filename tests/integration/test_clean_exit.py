"""A kernel that ends normally leaves no sandbox behind.

A notebook run by nbclient (`%load_ext wflo_jupyter`, one `%%wflo` cell) ends with a
shutdown request; the kernel's interpreter exits and the extension's exit hook closes the
session. Afterwards no container of that kernel exists (not even an exited one), and for
bubblewrap no process, socket directory or cgroup of it is left."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import wait_until
from wflo_jupyter.sandbox.bwrap import shared_socket_base
from wflo_jupyter.sandbox.session import default_socket_base

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kernel,
    pytest.mark.temporal,
    pytest.mark.postgres,
]

CELLS = [
    "%load_ext wflo_jupyter",
    "import os\nprint('kernel pid', os.getpid())",
    "%%wflo\nimport os\nprint('sandbox pid', os.getpid())",
    "magics = get_ipython()._wflo_magics\nprint(*magics.session.sandbox_ids())",
]


def run_notebook(env: dict[str, str]) -> tuple[int, str, str]:
    """Run the notebook to its end (nbclient shuts the kernel down): the kernel's pid, the
    sandbox cell's output and the sandbox's id."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    with pytest.MonkeyPatch.context() as patch:  # nbclient's kernel inherits os.environ
        for key, value in env.items():
            patch.setenv(key, value)
        NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    texts = [  # streams, and wflo's notices (display data)
        "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)
        for cell in notebook.cells
    ]
    pid = int(texts[1].split()[-1])
    assert "sandbox pid" in texts[2], texts[2]
    return pid, texts[2], texts[3].strip()


def _pid_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.docker
def test_a_notebook_run_leaves_no_container(
    stack_env: dict[str, str], docker_client: docker.DockerClient, runtime_image: str
) -> None:
    env = {**stack_env, "WFLO_ISOLATION": "docker", "WFLO_PROVIDER": "mock"}
    pid, _, container_id = run_notebook(env)
    assert len(container_id) == 64, container_id
    wait_until(lambda: _pid_gone(pid), 30, what=f"kernel {pid} to exit")
    left = docker_client.containers.list(all=True, filters={"label": f"org.wflo.kernel-pid={pid}"})
    assert [(c.short_id, c.status) for c in left] == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container_id)


def _bwrap_leftovers(pid: int) -> list[str]:
    found: list[str] = []
    for base in (default_socket_base(), shared_socket_base()):
        if base.is_dir():
            found += [str(p) for p in base.iterdir() if p.name.startswith(f"s{pid}-")]
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d.startswith(f"wflo-{pid}-")]
        if top.count("/") >= 8:
            dirs[:] = []
    return found


def test_a_bubblewrap_notebook_run_leaves_no_process_or_directory(
    stack_env: dict[str, str],
) -> None:
    env = {**stack_env, "WFLO_ISOLATION": "bubblewrap", "WFLO_PROVIDER": "mock"}
    pid, output, sandbox_id = run_notebook(env)
    assert "weaker isolation" in output
    assert sandbox_id.startswith("bwrap-"), sandbox_id
    wait_until(lambda: _pid_gone(pid), 30, what=f"kernel {pid} to exit")
    assert _pid_gone(int(sandbox_id.removeprefix("bwrap-")))
    assert _bwrap_leftovers(pid) == []
