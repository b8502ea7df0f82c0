"""The server extension's argument checks and the ledger keys of a contents path."""

from __future__ import annotations

import pytest

from wflo_jupyter.server.paths import (
    DEFAULT_LIMIT,
    BadRequest,
    check_limit,
    check_notebook_path,
    ledger_keys,
)


@pytest.mark.parametrize("path", ["a.ipynb", "reports/q3.ipynb", "with space/ü.ipynb", "x" * 1024])
def test_relative_contents_paths_pass(path: str) -> None:
    assert check_notebook_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        None,
        "",
        "/abs.ipynb",
        "~/a.ipynb",
        "../a.ipynb",
        "a/./b.ipynb",
        "a/",
        "a\x00b",
        "a\x7f",
        "x" * 1025,
        "C:/a.ipynb",
        "a\\b.ipynb",
    ],
)
def test_malformed_paths_are_refused_in_one_line(path: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        check_notebook_path(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("wflo: ")


def test_limits() -> None:
    assert check_limit(None) == DEFAULT_LIMIT
    assert check_limit("1") == 1 and check_limit("1000") == 1000
    for bad in ("0", "1001", "-3", "2.0", "", " 5", "\u0661"):
        with pytest.raises(BadRequest):
            check_limit(bad)


def test_a_path_is_looked_up_as_given_and_under_each_root() -> None:
    keys = ledger_keys("reports/q3.ipynb", ["/srv/nb", "/srv/nb/", "/other"])
    assert keys == ("reports/q3.ipynb", "/srv/nb/reports/q3.ipynb", "/other/reports/q3.ipynb")
