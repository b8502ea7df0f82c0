"""``wflo image build | list | prune``: the sandbox's runtime image from the recipe in the
package, and the images wflo built (the runtime, and ``%wflo image add``'s derived ones)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from wflo_jupyter.cli.common import console, err, progress, settings_or_exit
from wflo_jupyter.core.errors import WfloError

if TYPE_CHECKING:
    import docker

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

    settings = settings_or_exit()
    client = _client()
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


@image_app.command("list")
def image_list() -> None:
    """The images wflo built: tag, base, added packages, size, created."""
    from rich.table import Table

    from wflo_jupyter.runtime.inventory import built_images

    client = _client()
    try:
        images = built_images(client)
    finally:
        client.close()
    table = Table("tag", "kind", "base", "packages", "size", "created")
    for image in images:
        table.add_row(
            image.name,
            image.kind,
            image.base,
            " ".join(image.packages) or "-",
            f"{image.size_bytes / 2**20:.0f} MB",
            image.created.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table if images else "no images built by wflo on this Docker engine")


@image_app.command("prune")
def image_prune(
    all_images: Annotated[
        bool, typer.Option("--all", help="Also the runtime images (wflo image build).")
    ] = False,
) -> None:
    """Remove the derived images (%wflo image add) no running sandbox uses."""
    from wflo_jupyter.runtime.inventory import prune

    client = _client()
    try:
        outcome = prune(client, include_runtime=all_images)
    finally:
        client.close()
    for image, state in outcome:
        console.print(f"{image.name}: {state}", highlight=False)
    removed = sum(1 for _image, state in outcome if state == "removed")
    console.print(f"{removed} image(s) removed, {len(outcome) - removed} kept", highlight=False)


def _client() -> docker.DockerClient:
    from wflo_jupyter.sandbox.docker_engine import connect_docker

    settings = settings_or_exit()
    try:
        return connect_docker(settings.docker_host)
    except WfloError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
