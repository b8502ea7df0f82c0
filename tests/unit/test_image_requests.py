"""``%wflo image`` parsing, requirements files, the request hash that lets a second kernel
reuse an image at once, and pip's failures turned into one line (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wheels import make_wheel
from wflo_jupyter.core.commands import parse_line_command
from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.runtime.packages import PackageRequest, pip_failure
from wflo_jupyter.runtime.site import Platform
from wflo_jupyter.session.images import ImageUnavailable, requirement_lines

PLATFORM = Platform("cp311", "x86_64", "2.36")


def test_image_commands_parse() -> None:
    shown = parse_line_command("image")
    assert (shown.options["action"], shown.options["packages"]) == (None, [])
    add = parse_line_command("image add polars --find-links /w 'scikit-learn==1.*' --no-index")
    assert add.options == {
        "action": "add",
        "packages": ["polars", "scikit-learn==1.*"],
        "requirements": None,
        "find_links": ["/w"],
        "no_index": True,
    }
    assert parse_line_command("image add -r req.txt").options["requirements"] == "req.txt"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("image add", "%wflo image add: name at least one package, or -r requirements.txt"),
        ("image polars", "%wflo image: unknown action 'polars'; use %wflo image add PKG..."),
        (
            "image --no-index",
            "%wflo image: packages go after add: %wflo image add PKG... | -r FILE",
        ),
        ("image add --find-links", "%wflo image: argument --find-links: expected one argument"),
        ("image add x --bogus", "%wflo image: unrecognized arguments: --bogus"),
    ],
)
def test_bad_image_commands_are_one_line(line: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_line_command(line)
    assert str(error.value) == message


def test_requirement_lines(tmp_path: Path) -> None:
    good = tmp_path / "requirements.txt"
    good.write_text("# team\npolars==1.31.0  # fast\n\nscikit-learn==1.*\n")
    assert requirement_lines(str(good)) == ["polars==1.31.0", "scikit-learn==1.*"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ImageUnavailable, match=r"no requirement in it$"):
        requirement_lines(str(empty))
    with pytest.raises(ImageUnavailable, match=r"cannot read it \(No such file or directory\)"):
        requirement_lines(str(tmp_path / "missing.txt"))
    nested = tmp_path / "nested.txt"
    nested.write_text("-r other.txt\n")
    with pytest.raises(ImageUnavailable, match="only requirement lines are supported"):
        requirement_lines(str(nested))


def test_request_hash_ignores_order_and_follows_the_wheels(tmp_path: Path) -> None:
    one = PackageRequest(("a", "b==1.*"), (str(tmp_path),), True)
    assert one.digest("sha256:x") == PackageRequest(("b==1.*", "a"), (str(tmp_path),), True).digest(
        "sha256:x"
    )
    assert one.digest("sha256:x") != one.digest("sha256:y")  # another base image
    assert one.digest("sha256:x") != PackageRequest(("a", "b==1.*")).digest("sha256:x")
    before = one.digest("sha256:x")
    make_wheel(tmp_path, "a", "2.0", "new")  # a new wheel in --find-links: resolve again
    assert one.digest("sha256:x") != before


def test_pip_failures_become_one_line() -> None:
    missing = "Collecting polarz\nERROR: Could not find a version that satisfies the requirement polarz (from versions: none)\nERROR: No matching distribution found for polarz\n"
    assert pip_failure(missing, PLATFORM) == (
        "polarz: no wheel for the sandbox's platform (cp311, x86_64, glibc 2.36), or no such "
        "package on the index"
    )
    version = "\x1b[31mERROR: Could not find a version that satisfies the requirement foo==9 (from versions: 1.0, 2.0)\x1b[0m\n"
    assert pip_failure(version, PLATFORM) == (
        "foo==9: no wheel of a matching version for the sandbox's platform (cp311, x86_64, "
        "glibc 2.36); versions with one: 1.0, 2.0"
    )
    conflict = (
        "ERROR: Cannot install x because these package versions have conflicting dependencies.\n\n"
        "The conflict is caused by:\n    x 1.0 depends on numpy<1\n"
        "    The user requested (constraint) numpy==2.2.6\n\nTo fix this you could try to:\n"
    )
    assert pip_failure(conflict, PLATFORM) == (
        "cannot resolve the set: x 1.0 depends on numpy<1; The user requested (image) numpy==2.2.6"
    )
    assert pip_failure("ERROR: Invalid requirement: 'a b'\n", PLATFORM) == (
        "Invalid requirement: 'a b'"
    )
