"""``wflo doctor``'s pure part: the recipe hash (equal to the image build's), the rules
that turn what a probe saw into a finding, and the verdict."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from wflo_jupyter.core.commands import parse_line_command
from wflo_jupyter.core.doctor import FAIL, INFO, OK, SKIP, WARN, DoctorReport, Finding
from wflo_jupyter.core.doctor_rules import (
    GIB,
    BwrapSeen,
    DockerSeen,
    EngineSeen,
    ImageSeen,
    disk_finding,
    engine_finding,
    image_finding,
    python_finding,
    recipe_hash,
    sandbox_findings,
    sdk_finding,
    tokenizer_finding,
)
from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.runtime import recipe
from wflo_jupyter.runtime.site import Platform, site_key
from wflo_jupyter.runtime.steps import BuildError, run_logged

# The recipe hash as scripts/build-runtime-image.sh computed it for the images it built
# (the labels on images built before the recipe moved into the package), run by bash.
BASH_RECIPE_HASH = r"""
cd "$1"
{
    printf 'base=%s\n' "$2"
    printf 'base-id=%s\n' "$3"
    printf 'site-format=%s\n' "$4"
    find . -path ./.build -prune -o -type f -print | LC_ALL=C sort | while IFS= read -r f; do
        printf '%s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"
    done
} | sha256sum | cut -d' ' -f1
"""


def test_recipe_hash_is_the_image_builds(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    (tmp_path / "requirements.txt").write_text("numpy==2.0.0\n")
    (tmp_path / "Zeta.txt").write_text("upper case sorts first in C order\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.py").write_text("x = 1\n")
    args = ("wflo-base:bookworm", "sha256:" + "ab" * 32, "1")
    done = subprocess.run(
        ["bash", "-c", BASH_RECIPE_HASH, "bash", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = recipe.current_hash(tmp_path, args[0], args[1])
    assert ours == done.stdout.strip()
    (tmp_path / "requirements.txt").write_text("numpy==2.0.1\n")
    assert recipe.current_hash(tmp_path, args[0], args[1]) != ours
    assert recipe.current_hash(tmp_path, args[0], "sha256:" + "cd" * 32) != ours


def test_recipe_hash_sorts_bytewise() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    one = recipe_hash("b", "id", 1, [("a", digest), ("Z", digest)])
    two = recipe_hash("b", "id", 1, [("./Z", digest), ("./a", digest)])
    assert one == two


def test_the_recipe_pins_the_sdks() -> None:
    directory = recipe.recipe_dir()
    assert (directory / "Dockerfile").is_file()
    pins = recipe.pinned(directory)
    assert set(pins) >= {"openai", "anthropic", "numpy"}
    assert all(version[0].isdigit() for version in pins.values())


DOWN = DockerSeen("unix:///dead.sock", error="connection refused")
UP = DockerSeen("unix:///var/run/docker.sock", "27.1", "1.46")
BWRAP_OK = BwrapSeen(True, "drop")
NO_BWRAP = BwrapSeen(False, "bwrap is not installed", installed=False)


def test_docker_down_names_the_bubblewrap_fallback_where_it_works() -> None:
    docker, bwrap = sandbox_findings("auto", DOWN, BWRAP_OK)
    assert (docker.level, docker.state) == (FAIL, "unreachable")
    assert "unix:///dead.sock" in docker.found and "connection refused" in docker.found
    assert "start the Docker engine" in docker.remedy and "bubblewrap" in docker.remedy
    assert bwrap.level == OK and "until Docker answers" in bwrap.found
    explicit, _ = sandbox_findings("docker", DOWN, BWRAP_OK)
    assert "WFLO_ISOLATION=bubblewrap" in explicit.remedy


def test_docker_down_without_bubblewrap_says_how_to_get_it() -> None:
    docker, bwrap = sandbox_findings("auto", DOWN, NO_BWRAP)
    assert docker.level == FAIL and "bubblewrap" not in docker.remedy
    assert bwrap.level == INFO and "apt-get install bubblewrap" in bwrap.remedy


def test_docker_up() -> None:
    docker, bwrap = sandbox_findings("auto", UP, NO_BWRAP)
    assert docker.level == OK and "Docker 27.1 (API 1.46)" in docker.found
    assert bwrap.level == INFO and bwrap.remedy == ""  # nothing to do while Docker works


def test_bubblewrap_chosen_by_name() -> None:
    docker, bwrap = sandbox_findings("bubblewrap", DOWN, BwrapSeen(False, "no userns"))
    assert docker.level == INFO and docker.state == "not used"
    assert bwrap.level == FAIL and "unset WFLO_ISOLATION" in bwrap.remedy
    *_, isolation = sandbox_findings("unisolated", DOWN, NO_BWRAP)
    assert (isolation.level, isolation.state) == (WARN, "none")


HASH = "1" * 64


@pytest.mark.parametrize(
    ("seen", "level", "state"),
    [
        (None, SKIP, "not checked"),
        (ImageSeen("img", present=False), FAIL, "missing"),
        (ImageSeen("img", True, HASH, "base", True, HASH), OK, "current"),
        (ImageSeen("img", True, HASH, "base", True, "2" * 64), WARN, "stale"),
        (ImageSeen("img", True, HASH, "base", False, ""), WARN, "stale"),
        (ImageSeen("img", True, None, None, False, None), WARN, "unknown"),
        (ImageSeen("img", True, None, None, False, ""), WARN, "stale"),
    ],
)
def test_image(seen: ImageSeen | None, level: str, state: str) -> None:
    finding = image_finding(seen, "wflo image build")
    assert (finding.level, finding.state) == (level, state)
    if level in (FAIL, WARN) and state != "unknown":
        assert "wflo image build" in finding.remedy


def test_stale_image_names_both_recipes() -> None:
    finding = image_finding(ImageSeen("img", True, HASH, "b", True, "2" * 64), "make x")
    assert "111111111111" in finding.found and "222222222222" in finding.found


def test_engines() -> None:
    pg = engine_finding(EngineSeen("postgres", "127.0.0.1:1", "WFLO_DATABASE_URL", error="refused"))
    assert (pg.level, pg.state) == (FAIL, "down")
    assert "127.0.0.1:1" in pg.found and "refused" in pg.found
    assert "WFLO_DATABASE_URL" in pg.remedy
    redis = engine_finding(EngineSeen("redis", "redis://h:1/0", "local stack", error="x"))
    assert redis.level == WARN and "wflo down && wflo up" in redis.remedy
    assert "uncached" in redis.remedy
    up = engine_finding(EngineSeen("temporal", "h:7233", "WFLO_TEMPORAL_ADDRESS", True, "1.2"))
    assert up.level == OK and up.found == "temporal 1.2 at h:7233 (WFLO_TEMPORAL_ADDRESS)"
    idle = engine_finding(EngineSeen("postgres", None, "local stack"))
    assert idle.level == INFO and "wflo up" in idle.remedy
    kafka = engine_finding(EngineSeen("kafka", None, "local stack"))
    assert kafka.level == INFO and "--with-kafka" in kafka.remedy
    missing = "postgres: package 'pgserver' is not installed"
    absent = engine_finding(
        EngineSeen("postgres", None, "local stack", error=missing, variable="WFLO_DATABASE_URL")
    )
    assert (absent.level, absent.state) == (FAIL, "not installed")
    assert missing in absent.found
    assert absent.remedy == (
        "pip install 'wflo-jupyter[local]', or set WFLO_DATABASE_URL to a server of yours"
    )
    no_kafka = engine_finding(EngineSeen("kafka", None, "local stack", error="no noida-db"))
    assert (no_kafka.level, no_kafka.state) == (INFO, "not installed")  # optional engine


def test_host() -> None:
    assert python_finding((3, 10, 2), "/py").level == FAIL
    assert python_finding((3, 12, 0), "/py").found == "3.12.0 (/py)"
    assert sdk_finding("openai", "1.2.3", None).found == (
        "sandbox 1.2.3; host not installed (not needed)"
    )
    assert sdk_finding("openai", None, "1.0").level == INFO
    full = tokenizer_finding(["o200k_base", "cl100k_base"], "/h/tiktoken")
    assert full.level == OK
    part = tokenizer_finding(["cl100k_base"], "/h/tiktoken")
    assert part.level == WARN and "o200k_base.tiktoken in /h/tiktoken" in part.remedy
    assert disk_finding("/h", GIB // 2).level == FAIL
    assert disk_finding("/h", 2 * GIB).level == WARN
    assert disk_finding("/h", 40 * GIB).found == "40.0 GiB free under /h"


def test_verdict() -> None:
    fine = DoctorReport((Finding("a", OK, "ok", ""), Finding("b", INFO, "not running", "")))
    assert fine.ok and fine.exit_code == 0 and fine.verdict() == "ready for the quickstart"
    warned = DoctorReport((Finding("a", OK, "ok", ""), Finding("disk", WARN, "low", "")))
    assert warned.exit_code == 0 and warned.verdict().endswith("(with warnings: disk)")
    broken = DoctorReport(
        (
            Finding("Docker engine", FAIL, "unreachable", "x", "start it"),
            Finding("runtime image", SKIP, "not checked", ""),
            Finding("postgres", FAIL, "down", "y"),
        ),
        version="1.0",
    )
    assert broken.exit_code == 1
    assert broken.verdict() == (
        "the quickstart is blocked: Docker engine unreachable, postgres down"
    )
    data = json.loads(json.dumps(broken.as_dict()))
    assert data["blocking"] == ["Docker engine", "postgres"] and data["ok"] is False
    assert data["checks"][0]["remedy"] == "start it" and data["version"] == "1.0"
    with pytest.raises(ValueError, match="level"):
        Finding("a", "bad", "", "")


def test_doctor_line_command() -> None:
    assert parse_line_command("doctor").options == {"timeout": 5.0}
    assert parse_line_command("doctor --timeout 1.5").options == {"timeout": 1.5}
    for bad in ("doctor --timeout 0", "doctor --timeout soon", "doctor extra"):
        with pytest.raises(SpecError):
            parse_line_command(bad)


def test_manylinux_tags_and_site_key() -> None:
    platform = Platform("cp311", "x86_64", "2.36")
    tags = platform.manylinux()
    assert tags[0] == "manylinux_2_36_x86_64" and tags[19] == "manylinux_2_17_x86_64"
    assert tags[20:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert Platform("cp311", "aarch64", "2.17").manylinux() == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ]
    key = site_key(platform, b"numpy==2.0.0\n")
    assert key == site_key(platform, b"numpy==2.0.0\n")
    assert key != site_key(platform, b"numpy==2.0.1\n")
    assert key != site_key(Platform("cp311", "x86_64", "2.31"), b"numpy==2.0.0\n")


def test_a_long_step_says_how_it_ended() -> None:
    said: list[str] = []
    text = run_logged(["sh", "-c", "echo fetched; echo warned >&2"], "fetch", said.append)
    assert text.split() == ["fetched", "warned"]
    assert said[-1].startswith("  fetch: done in ")
    with pytest.raises(BuildError) as failed:
        run_logged(["sh", "-c", "seq 1 40; exit 3"], "pip install", said.append)
    lines = str(failed.value).splitlines()
    assert lines[0] == "pip install failed (exit 3); its last lines:"
    assert lines[1:] == [str(n) for n in range(16, 41)]  # the last 25
    with pytest.raises(BuildError, match=r"^debootstrap: cannot run /nonexistent/debootstrap"):
        run_logged(["/nonexistent/debootstrap"], "debootstrap", said.append)
