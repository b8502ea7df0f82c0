"""``--out`` values: how a cell's variables leave the sandbox, in safe formats only.

JSON (str/int/float/bool/None, lists and str-keyed dicts of those), bytes, numpy arrays
and scalars as ``.npy`` (``allow_pickle=False``), pandas DataFrames and Series as Arrow
IPC. Anything else is refused with a one-line error naming the variable and its type;
errors are per name, never an exception. (``--in`` values arrive pickled from the
trusted host: the kernel loads them.)
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import formats, protocol
else:  # inside the sandbox: the parts are loaded by path (loader.py)
    from _wflo_agent_loader import load

    formats, protocol = load("formats"), load("protocol")

OUTPUT_LIMIT_BYTES = protocol.MAX_FRAME_BYTES - 1024 * 1024
"""The encoded ``--out`` values of one cell must fit in one frame, with room to spare."""


def _json_problem(value: Any) -> tuple[str, bool] | None:
    """None if ``value`` is JSON (str/int/float/bool/None, lists and str-keyed dicts of
    those); else (what is not, whether that is ``value`` itself)."""
    stack: list[Any] = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (str, bool, int, float)):
            continue
        if isinstance(item, (list, dict)):
            if id(item) in seen:
                return f"self-referencing {formats.type_name(item)}", item is value
            seen.add(id(item))
            if isinstance(item, list):
                stack.extend(item)
                continue
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"dict with a key of type {formats.type_name(key)}", item is value
                stack.append(inner)
            continue
        return formats.type_name(item), item is value
    return None


def _refusal(name: str, what: str, value: Any) -> dict[str, Any]:
    return {
        "error": (
            f"cannot return {name}: {what} is not JSON, a DataFrame/Series, a numpy array or bytes"
        ),
        "type": formats.type_name(value),
    }


def _encode_arrow(name: str, value: Any, pandas: Any) -> dict[str, Any]:
    tname = formats.type_name(value)
    try:
        pyarrow = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.ipc")
    except ImportError:
        return {"error": f"cannot return {name}: pyarrow is not installed in the sandbox image"}
    is_series = isinstance(value, pandas.Series)
    series_name = None
    frame = value
    if is_series:
        series_name = value.name if formats.jsonable(value.name) else str(value.name)
        frame = value.to_frame(name="values")
    try:
        table = pyarrow.Table.from_pandas(frame, preserve_index=True)
        sink = pyarrow.BufferOutputStream()
        with pyarrow.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        raw = sink.getvalue().to_pybytes()
    except Exception as exc:
        return {
            "error": f"cannot return {name}: {tname} cannot be converted to Arrow "
            f"({formats.one_line(exc)})",
            "type": tname,
        }
    encoded: dict[str, Any] = {
        "format": "arrow",
        "kind": "series" if is_series else "dataframe",
        "type": tname,
        "data": protocol.b64encode(raw),
    }
    if is_series:
        encoded["series_name"] = series_name
    return encoded


def _encode_npy(name: str, value: Any, numpy: Any) -> dict[str, Any]:
    tname = formats.type_name(value)
    is_scalar = not isinstance(value, numpy.ndarray)
    array = numpy.asarray(value)
    buffer = io.BytesIO()
    try:
        numpy.save(buffer, array, allow_pickle=False)
    except (ValueError, TypeError) as exc:
        return {
            "error": f"cannot return {name}: a numpy array of dtype {array.dtype} cannot be "
            f"sent without pickle ({formats.one_line(exc)})",
            "type": tname,
        }
    return {
        "format": "npy",
        "kind": "scalar" if is_scalar else "array",
        "type": tname,
        "data": protocol.b64encode(buffer.getvalue()),
    }


def encode_value(name: str, value: Any) -> dict[str, Any]:
    """One ``--out`` value -> ``{format, type, data, ...}`` or ``{error, type}``."""
    tname = formats.type_name(value)
    if isinstance(value, (bytes, bytearray)):
        return {"format": "bytes", "type": tname, "data": protocol.b64encode(bytes(value))}
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, (pandas.DataFrame, pandas.Series)):
        return _encode_arrow(name, value, pandas)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _encode_npy(name, value, numpy)
    problem = _json_problem(value)
    if problem is not None:
        what, itself = problem
        return _refusal(name, what if itself else f"{tname} holding a {what}", value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"error": f"cannot return {name}: {formats.one_line(exc)}", "type": tname}
    return {"format": "json", "type": tname, "data": text}


def encode_outputs(names: Sequence[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Every requested ``--out`` name, encoded (errors per name, never an exception)."""
    outputs: dict[str, Any] = {}
    total = 0
    for name in names:
        if name not in namespace:
            outputs[name] = {"error": f"cannot return {name}: name {name!r} is not defined"}
            continue
        try:
            encoded = encode_value(name, namespace[name])
        except Exception as exc:
            encoded = {
                "error": f"cannot return {name}: {formats.one_line(exc)}",
                "type": formats.type_name(namespace[name]),
            }
        size = len(encoded.get("data") or "")
        if total + size > OUTPUT_LIMIT_BYTES:
            encoded = {
                "error": f"cannot return {name}: its encoded size "
                f"({formats.format_bytes(size)}) is over the channel limit of "
                f"{formats.format_bytes(OUTPUT_LIMIT_BYTES)} per cell",
                "type": encoded.get("type", formats.type_name(namespace[name])),
            }
            size = 0
        total += size
        outputs[name] = encoded
    return outputs
