"""The example notebooks that ship in the package (``wflo_jupyter/examples``): finding them
with ``importlib.resources``, ``wflo examples DIR`` (copy them out), and running one headless
for ``wflo demo`` (its kernel on Unix sockets)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from wflo_jupyter.cli.common import console, err, progress

QUICKSTART = "quickstart.ipynb"


def example_notebooks() -> list[Traversable]:
    """The packaged example notebooks, by name."""
    folder = files("wflo_jupyter").joinpath("examples")
    return sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".ipynb")),
        key=lambda entry: entry.name,
    )


@contextmanager
def packaged_quickstart() -> Iterator[Path]:
    """The packaged quickstart notebook as a file on disk (for ``wflo demo``)."""
    with as_file(files("wflo_jupyter").joinpath("examples", QUICKSTART)) as path:
        yield path


def examples(
    directory: Annotated[Path, typer.Argument(help="Folder to copy the notebooks into.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Copy the example notebooks into DIRECTORY (created if needed), one line each."""
    if directory.exists() and not directory.is_dir():
        err.print(
            f"[red]error:[/red] {escape(str(directory))} exists and is not a folder", soft_wrap=True
        )
        raise typer.Exit(2)
    notebooks = example_notebooks()
    present = [directory / nb.name for nb in notebooks if (directory / nb.name).exists()]
    if present and not force:
        for target in present:
            err.print(
                f"[red]error:[/red] {escape(str(target))} exists (--force overwrites it)",
                soft_wrap=True,
            )
        raise typer.Exit(1)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for notebook in notebooks:
            target = directory / notebook.name
            state = "replaced" if target in present else "wrote"
            target.write_bytes(notebook.read_bytes())
            console.print(f"{state} {escape(str(target))}", highlight=False, soft_wrap=True)
    except OSError as exc:
        err.print(
            f"[red]error:[/red] cannot write to {escape(str(directory))}: {exc.strerror or exc}"
        )
        raise typer.Exit(1) from None
    progress(f"start with: jupyter lab {escape(str(directory / QUICKSTART))}")


def run_notebook(notebook: Path, timeout: int) -> Any:
    """Execute ``notebook`` in a fresh kernel (Unix sockets in a private runtime folder:
    nothing listens on TCP), with the notebook's folder as its working directory; return
    the executed notebook. A failing cell is one line on stderr and exit 1."""
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    progress(f"running {notebook} ({len(nb.cells)} cells)...")
    sockets = Path(tempfile.mkdtemp(prefix="wflo-demo-kernel-"))  # 0700, ours alone
    kernel = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "ipc"))
    client = NotebookClient(
        nb,
        km=kernel,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        err.print(f"[red]the notebook failed:[/red] {str(exc).strip().splitlines()[-1]}")
        raise typer.Exit(1) from None
    finally:
        if run_sync(kernel.is_alive)():  # ours to stop: nbclient leaves a given kernel up
            run_sync(kernel.shutdown_kernel)(now=False)
        shutil.rmtree(sockets, ignore_errors=True)
    return nb


def print_outputs(nb: Any) -> None:
    """The executed notebook's printed text and wflo's notices, in cell order."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                sys.stdout.write(output.get("text", ""))
            elif output.get("output_type") == "display_data":  # wflo's notices
                text = output.get("data", {}).get("text/plain", "")
                text = "".join(text) if isinstance(text, list) else str(text)
                if text.startswith("[wflo] "):
                    sys.stdout.write(text.rstrip("\n") + "\n")
