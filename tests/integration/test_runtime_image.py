"""The sandbox runtime image (wflo_jupyter/runtime/python3.11) as the sandbox runs it.

Needs a Docker engine and the image built by `wflo image build`.
Fixtures (from the suite's conftest): ``docker_client`` (docker.DockerClient)
and ``runtime_image`` (the image tag, e.g. ``wflo-runtime:python3.11``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from wflo_jupyter.runtime.recipe import recipe_dir

pytestmark = [pytest.mark.integration, pytest.mark.docker]

# The isolation the sandbox runner applies (DESIGN: network off, non-root,
# read-only root, writable /workspace on a tmpfs owned by uid 1000).
SANDBOX_OPTIONS: Final[dict[str, Any]] = {
    "network_mode": "none",
    "read_only": True,
    "tmpfs": {"/workspace": "size=64m,uid=1000,gid=1000"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}
# A session container as the runner starts it: also a tmpfs /tmp (matplotlib
# keeps its config and font cache in MPLCONFIGDIR=/tmp/matplotlib), and uid
# 1000 spelled out.
SESSION_OPTIONS: Final[dict[str, Any]] = {
    **SANDBOX_OPTIONS,
    "user": "1000:1000",
    "tmpfs": {"/workspace": "size=64m,uid=1000,gid=1000", "/tmp": "size=64m,mode=1777"},
}
RUN_TIMEOUT_S: Final[int] = 60

REQUIREMENTS: Final[Path] = recipe_dir() / "requirements.txt"
# What cells can count on (issue 3, item 7); requirements.txt pins them and
# their dependencies.
PROMISED: Final[tuple[str, ...]] = (
    "numpy",
    "pandas",
    "pyarrow",
    "matplotlib",
    "openai",
    "anthropic",
)
PNG_SIGNATURE: Final[bytes] = b"\x89PNG\r\n\x1a\n"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
    """``name==version`` lines of requirements.txt, names normalized."""
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.split("#", 1)[0].strip())
        if match:
            pins[normalize(match[1])] = match[2]
    return pins


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: str
    stderr: str


def run_python(
    client: docker.DockerClient,
    image: str,
    code: str,
    *,
    python: tuple[str, ...] = ("python3",),
    options: dict[str, Any] = SANDBOX_OPTIONS,
) -> RunResult:
    """Run ``python3 -c code`` in a sandboxed container; always remove it."""
    container: Container = client.containers.create(image, command=[*python, "-c", code], **options)
    try:
        container.start()
        status = container.wait(timeout=RUN_TIMEOUT_S)
        stdout: bytes = container.logs(stdout=True, stderr=False)
        stderr: bytes = container.logs(stdout=False, stderr=True)
        return RunResult(
            exit_code=int(status["StatusCode"]),
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )
    finally:
        container.remove(force=True)


def run_json(client: docker.DockerClient, image: str, code: str) -> dict[str, Any]:
    """Run code that prints one JSON object; return it (fail on non-zero exit)."""
    result = run_python(client, image, code)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def run_session_json(client: docker.DockerClient, image: str, code: str) -> dict[str, Any]:
    """Like run_json, as ``python3 -I`` (the agent's way) in a session container.

    Also fails on anything written to stderr: a warning there (say, matplotlib
    finding no writable config dir) is a defect of the image.
    """
    result = run_python(client, image, code, python=("python3", "-I"), options=SESSION_OPTIONS)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    assert result.stderr == "", result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


# Python run inside the container: try to write a file, report what happened.
TRY_WRITE: Final[str] = """
import errno, json, os, sys
path = sys.argv[1] if len(sys.argv) > 1 else PATH
try:
    with open(path, "w") as f:
        f.write("wflo")
    with open(path) as f:
        back = f.read()
    st = os.stat(path)
    print(json.dumps({"ok": True, "read_back": back, "owner": st.st_uid}))
except OSError as e:
    print(json.dumps({"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}))
"""


def try_write(client: docker.DockerClient, image: str, path: str) -> dict[str, Any]:
    return run_json(client, image, f"PATH = {path!r}\n{TRY_WRITE}")


def test_image_exists_with_labels(docker_client: docker.DockerClient, runtime_image: str) -> None:
    try:
        image = docker_client.images.get(runtime_image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{runtime_image} is missing: run `wflo image build`")
    config: dict[str, Any] = image.attrs["Config"]
    labels: dict[str, str] = config.get("Labels") or {}
    assert labels.get("org.wflo.runtime") == "python3.11"
    assert re.fullmatch(r"[0-9a-f]{64}", labels.get("org.wflo.recipe-hash", "")), labels
    assert config.get("User") == "1000"
    assert config.get("WorkingDir") == "/workspace"
    env: list[str] = config.get("Env") or []
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "MPLBACKEND=Agg" in env
    assert "MPLCONFIGDIR=/tmp/matplotlib" in env


def test_runs_python311_as_uid_1000_in_workspace(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    info = run_json(
        docker_client,
        runtime_image,
        "import json, os, sys; print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), "
        "'cwd': os.getcwd(), 'version': list(sys.version_info[:2]), "
        "'home': os.environ.get('HOME')}))",
    )
    assert info["uid"] == 1000
    assert info["gid"] == 1000
    assert info["cwd"] == "/workspace"
    assert info["version"] == [3, 11]
    assert info["home"] == "/home/sandbox"


def test_cannot_write_etc(docker_client: docker.DockerClient, runtime_image: str) -> None:
    outcome = try_write(docker_client, runtime_image, "/etc/wflo-probe")
    assert outcome["ok"] is False
    assert outcome["errno"] in {"EROFS", "EACCES"}


def test_root_filesystem_is_read_only(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    # /tmp is world-writable in the image, so only the read-only root stops this.
    outcome = try_write(docker_client, runtime_image, "/tmp/wflo-probe")
    assert outcome == {"ok": False, "errno": "EROFS"}


def test_can_write_workspace(docker_client: docker.DockerClient, runtime_image: str) -> None:
    outcome = try_write(docker_client, runtime_image, "/workspace/wflo-probe.txt")
    assert outcome == {"ok": True, "read_back": "wflo", "owner": 1000}


def test_has_no_network(docker_client: docker.DockerClient, runtime_image: str) -> None:
    info = run_json(
        docker_client,
        runtime_image,
        "import json, socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=3).close()\n"
        "    print(json.dumps({'connected': True}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'connected': False, 'error': type(e).__name__}))\n",
    )
    assert info["connected"] is False


def test_requirements_pin_the_promised_packages() -> None:
    pins = pinned_versions()
    missing = [name for name in PROMISED if name not in pins]
    assert not missing, f"{REQUIREMENTS} does not pin {missing}"


# Inside the container: import what is promised, report versions and origins.
REPORT_PACKAGES: Final[str] = """
import importlib, importlib.metadata, json, os, sys
promised, pinned = PROMISED, PINNED
modules = {name: importlib.import_module(name) for name in promised}
print(json.dumps({
    "isolated": sys.flags.isolated,
    "uid": os.getuid(),
    "versions": {name: importlib.metadata.version(name) for name in pinned},
    "modules": {name: module.__version__ for name, module in modules.items()},
    "files": {name: module.__file__ for name, module in modules.items()},
}))
"""


def test_promised_packages_import_isolated_at_pinned_versions(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    pins = pinned_versions()
    info = run_session_json(
        docker_client,
        runtime_image,
        f"PROMISED = {list(PROMISED)!r}\nPINNED = {sorted(pins)!r}\n{REPORT_PACKAGES}",
    )
    assert info["isolated"] == 1
    assert info["uid"] == 1000
    assert info["versions"] == pins
    assert info["modules"] == {name: pins[name] for name in PROMISED}
    for name, path in info["files"].items():
        assert path.startswith("/opt/wflo/site/"), (name, path)


PLOT_TO_WORKSPACE: Final[str] = """
import base64, json, os
import matplotlib
import matplotlib.pyplot as plt
from matplotlib import font_manager
fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
ax.plot([0, 1, 2, 3], [1, 4, 9, 16], label="y = x\u00b2")
ax.set_title("wflo sandbox \u2713")
ax.legend()
fig.savefig("/workspace/plot.png")
with open("/workspace/plot.png", "rb") as f:
    png = f.read()
print(json.dumps({
    "backend": matplotlib.get_backend(),
    "configdir": matplotlib.get_configdir(),
    "font": os.path.basename(font_manager.findfont("DejaVu Sans", fallback_to_default=False)),
    "owner": os.stat("/workspace/plot.png").st_uid,
    "png": base64.b64encode(png).decode(),
}))
"""


def test_matplotlib_saves_png_into_workspace(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    info = run_session_json(docker_client, runtime_image, PLOT_TO_WORKSPACE)
    assert info["backend"].lower() == "agg"
    assert info["configdir"] == "/tmp/matplotlib"
    assert info["font"] == "DejaVuSans.ttf"  # shipped in matplotlib's wheel
    assert info["owner"] == 1000
    png = base64.b64decode(info["png"])
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (200, 150)


# A DataFrame of the kinds a cell hands back with --out, through an Arrow IPC
# stream (the format values.py reads on the host) written to /workspace.
ARROW_ROUND_TRIP: Final[str] = """
import base64, json
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
df = pd.DataFrame({
    "n": np.arange(5, dtype="int64"),
    "x": [0.5, 1.5, np.nan, 3.5, 4.5],
    "s": ["a", "b", None, "d", "\u00e9"],
    "t": pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC"),
    "c": pd.Categorical(["lo", "hi", "lo", "hi", "lo"]),
})
table = pa.Table.from_pandas(df, preserve_index=False)
with pa.OSFile("/workspace/df.arrows", "wb") as sink:
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
with pa.memory_map("/workspace/df.arrows") as source:
    back = pa.ipc.open_stream(source).read_all().to_pandas()
pd.testing.assert_frame_equal(back, df)
with open("/workspace/df.arrows", "rb") as f:
    raw = f.read()
print(json.dumps({
    "equal": True,
    "rows": len(back),
    "dtypes": {k: str(v) for k, v in back.dtypes.items()},
    "ipc": base64.b64encode(raw).decode(),
}))
"""


def test_pandas_arrow_ipc_round_trip_in_workspace(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    info = run_session_json(docker_client, runtime_image, ARROW_ROUND_TRIP)
    assert info["equal"] is True
    assert info["rows"] == 5
    assert info["dtypes"]["n"] == "int64"
    assert re.fullmatch(r"datetime64\[(ns|us), UTC\]", info["dtypes"]["t"]), info["dtypes"]
    assert info["dtypes"]["c"] == "category"


def test_arrow_ipc_from_the_sandbox_reads_on_the_host(
    docker_client: docker.DockerClient, runtime_image: str
) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    info = run_session_json(docker_client, runtime_image, ARROW_ROUND_TRIP)
    table = ipc.open_stream(pa.BufferReader(base64.b64decode(info["ipc"]))).read_all()
    assert table.num_rows == 5
    assert table.column("n").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("s").to_pylist() == ["a", "b", None, "d", "\u00e9"]
    stamps = table.schema.field("t").type
    assert pa.types.is_timestamp(stamps), stamps
    assert stamps.tz == "UTC"
    assert table.column("t")[0].as_py() == datetime(2024, 1, 1, tzinfo=UTC)
