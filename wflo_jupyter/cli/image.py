"""``wflo image build``: the sandbox's runtime image from the recipe in the package."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from wflo_jupyter.cli.common import console, err, progress, settings_or_exit
from wflo_jupyter.core.errors import WfloError

image_app = typer.Typer(help="The sandbox's runtime image.", no_args_is_help=True)


@image_app.command("build")
def image_build(
    tag: Annotated[
        str | None,
        typer.Option(help="Image tag (default: WFLO_RUNTIME_IMAGE, else wflo-runtime:python3.11)."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            help="Base image to build FROM (default: WFLO_RUNTIME_BASE, else the current "
            "image's base, else python:3.11-slim, else one built from a Debian mirror)."
        ),
    ] = None,
) -> None:
    """Build the runtime image; quick and without downloads when it is up to date."""
    from wflo_jupyter.runtime.build import ImageBuilder
    from wflo_jupyter.sandbox.docker_engine import connect_docker

    settings = settings_or_exit()
    try:
        client = connect_docker(settings.docker_host)
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        result = ImageBuilder(client, settings.home, progress).build(
            tag or settings.runtime_image, base or os.environ.get("WFLO_RUNTIME_BASE") or None
        )
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    finally:
        client.close()
    state = "built" if result.built else "up to date"
    console.print(
        f"{result.tag}: {state} (base {result.base}, recipe {result.recipe_hash[:12]}, "
        f"{result.seconds:.1f} s)"
    )
