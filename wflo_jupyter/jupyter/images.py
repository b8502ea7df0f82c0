"""``%wflo image`` and ``%wflo image add``: show this notebook's sandbox image and its added
packages; build (or reuse) a derived image and switch the session to it.

The switch is recorded in the notebook itself: the cell's output carries
``{"wflo": {"image": TAG, "packages": [...], "requested": [...]}}`` in its metadata, saved
with the ``.ipynb`` (a kernel cannot write the notebook's own metadata: the frontend owns
the document).
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.display import publish_display_data

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.jupyter import display
from wflo_jupyter.session import WfloSession

METADATA_KEY = "wflo"


def show_image(session: WfloSession, image: str) -> None:
    """``%wflo image``: the image and the packages added to it."""
    try:
        tag, packages = session.images.describe(image)
    except WfloError as exc:
        raise UsageError(str(exc)) from None
    added = ", ".join(packages) if packages else "none (the runtime's own packages only)"
    display.notice(f"sandbox image {tag}; added packages: {added}")


def add_packages(
    session: WfloSession, base: str, options: dict[str, Any], *, auto_build: bool
) -> str:
    """``%wflo image add``: the derived image's tag, the session switched to it."""
    try:
        result = session.images.add(
            base,
            list(options["packages"]),
            requirements=options["requirements"],
            find_links=list(options["find_links"]),
            no_index=options["no_index"],
            auto_build=auto_build,
        )
    except WfloError as exc:
        raise UsageError(str(exc)) from None
    if result.tag != base:
        session.sandboxes.discard(base)
    how = "built" if result.built else "reused"
    text = (
        f"sandbox image {result.tag} ({how} in {result.seconds:.1f} s) with "
        f"{', '.join(result.packages)}: new sandbox session, state from earlier cells was dropped"
        if result.tag != base
        else f"sandbox image {base} already has what was asked; the session is unchanged"
    )
    publish_display_data(
        display.notice_bundle(text),
        metadata={
            METADATA_KEY: {
                "image": result.tag,
                "packages": list(result.packages),
                "requested": list(options["packages"]),
            }
        },
    )
    return result.tag


__all__ = ["METADATA_KEY", "add_packages", "show_image"]
