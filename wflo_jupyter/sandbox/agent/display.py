"""Rich display: mime bundles the way IPython builds them, the ``display()`` builtin, and
matplotlib figures shown inline.

- ``mimebundle(obj)``: ``_repr_mimebundle_`` and the ``_repr_*_`` methods, matplotlib
  figures as ``image/png``, always ``text/plain``;
- ``Display``: ``display()`` for cells and ``publish`` of ``display`` frames, counted
  against the cell's output cap;
- ``PyplotHook``: the Agg backend's ``plt.show()`` sends every open figure as a PNG
  (and the kernel does the same at the end of each cell), then closes them.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import json
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import formats, protocol
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    formats, protocol = load("formats"), load("protocol")

if TYPE_CHECKING:
    from .capture import OutputBudget
    from .channel import Sender

_BINARY_MIMES = ("image/png", "image/jpeg")
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


def _is_class(obj: Any) -> bool:
    return isinstance(obj, type)


def _normalise_mime(mime: str, value: Any) -> Any:
    """A value for ``data[mime]`` in a Jupyter bundle, or None to drop it."""
    if value is None:
        return None
    if mime in _BINARY_MIMES:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return protocol.b64encode(bytes(value))
        return value if isinstance(value, str) else None
    if mime == "application/json" or mime.endswith("+json"):
        return value if formats.jsonable(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _figure_png(obj: Any) -> bytes | None:
    figure_module = sys.modules.get("matplotlib.figure")
    if figure_module is None or not isinstance(obj, figure_module.Figure):
        return None
    buffer = io.BytesIO()
    obj.canvas.print_figure(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def mimebundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``obj`` the way IPython's display formatters build it."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if not _is_class(obj):
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                produced = method(include=None, exclude=None)
            except Exception:
                produced = None
            extra_md: Any = None
            if isinstance(produced, tuple) and len(produced) == 2:
                produced, extra_md = produced
            if isinstance(produced, dict):
                for mime, value in produced.items():
                    normal = _normalise_mime(str(mime), value)
                    if normal is not None:
                        data[str(mime)] = normal
            if isinstance(extra_md, dict) and formats.jsonable(extra_md):
                metadata.update({str(k): v for k, v in extra_md.items()})
        for mime, attr in _REPR_METHODS:
            if mime in data:
                continue
            method = getattr(obj, attr, None)
            if not callable(method):
                continue
            try:
                value = method()
            except Exception:
                continue
            if isinstance(value, tuple) and len(value) == 2:
                value, md = value
                if isinstance(md, dict) and formats.jsonable(md):
                    metadata[mime] = md
            normal = _normalise_mime(mime, value)
            if normal is not None:
                data[mime] = normal
        if "image/png" not in data:
            try:
                png = _figure_png(obj)
            except Exception:
                png = None
            if png is not None:
                data["image/png"] = protocol.b64encode(png)
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as exc:
            data["text/plain"] = (
                f"<{formats.type_name(obj)} object (repr failed: {formats.one_line(exc)})>"
            )
    return data, metadata


class PyplotHook:
    """A ``sys.meta_path`` finder that patches ``matplotlib.pyplot.show`` right after pyplot
    is imported (duck-typed: ``importlib.abc`` costs 25 ms of agent start-up)."""

    def __init__(self, on_import: Callable[[types.ModuleType], None]) -> None:
        self._on_import = on_import

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module
        on_import = self._on_import

        def exec_module(module: types.ModuleType) -> None:
            original(module)
            with contextlib.suppress(Exception):
                on_import(module)

        setattr(loader, "exec_module", exec_module)  # noqa: B010 - patch one loader instance
        return spec


class Display:
    """``display()`` and ``publish`` for the cell that runs now (``current_id``): nothing
    is shown between cells. Text printed before a display is sent before it
    (``sync_output``)."""

    def __init__(
        self,
        sender: Sender,
        budget: OutputBudget,
        current_id: Callable[[], str | None],
        sync_output: Callable[[], None],
    ) -> None:
        self.sender = sender
        self.budget = budget
        self._current_id = current_id
        self._sync_output = sync_output

    def display_builtin(
        self,
        *objs: Any,
        metadata: dict[str, Any] | None = None,
        raw: bool = False,
        **_ignored: Any,
    ) -> None:
        """``display(obj, ...)``: show objects in the cell's output, like IPython."""
        for obj in objs:
            if raw and isinstance(obj, dict):
                data = {str(k): v for k, v in obj.items() if _normalise_mime(str(k), v) is not None}
                self.publish(data, dict(metadata or {}))
            else:
                data, md = mimebundle(obj)
                if metadata:
                    md.update(metadata)
                self.publish(data, md)

    def publish(
        self, data: dict[str, Any], metadata: dict[str, Any], kind: str = "display_data"
    ) -> None:
        cell_id = self._current_id()
        if cell_id is None:
            return
        self._sync_output()  # text printed before the display arrives before it
        frame = {
            "type": "display",
            "id": cell_id,
            "data": data,
            "metadata": metadata if formats.jsonable(metadata) else {},
            "kind": kind,
        }
        try:
            encoded_size = len(json.dumps(frame["data"]))
        except (TypeError, ValueError):
            return
        fits, reached = self.budget.admit_size(encoded_size)
        if fits:
            self.sender.send(frame)
        if reached:
            self.sender.send(
                {"type": "stream", "id": cell_id, "name": "stderr", "text": self.budget.notice()}
            )

    def patch_pyplot(self, pyplot: types.ModuleType) -> None:
        def show(*args: Any, **kwargs: Any) -> None:
            self.flush_figures()

        pyplot.show = show  # type: ignore[attr-defined]

    def flush_figures(self) -> None:
        """Send every open matplotlib figure as a PNG, then close them all."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or self._current_id() is None:
            return
        try:
            for number in list(pyplot.get_fignums()):
                figure = pyplot.figure(number)
                data, md = mimebundle(figure)
                self.publish(data, md)
        finally:
            pyplot.close("all")
