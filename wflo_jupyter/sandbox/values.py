"""Values crossing the sandbox boundary, host side: ``--in`` out, ``--out`` back in.

Owns the one rule that makes ``--out`` safe: NOTHING that comes out of a sandbox is ever
unpickled. Values coming back are decoded from these formats only:

- ``json``  -> the JSON value (str, int, float, bool, None, lists and dicts of those);
- ``bytes`` -> ``bytes``;
- ``npy``   -> ``numpy.load(..., allow_pickle=False)`` (numpy imported lazily);
- ``arrow`` -> an Arrow IPC stream read with pyarrow, converted to a pandas DataFrame or
  Series (both imported lazily; pyarrow >= 14.0.1, which never unpickles extension types).

Any other format is refused with ``UnsafeValue``: one line naming the variable and its
type. Values going IN are pickled (the host is trusted; the sandbox unpickles them).
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
from collections.abc import Mapping
from typing import Any

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.sandbox.agent.protocol import ProtocolError, b64decode, b64encode

PICKLE_PROTOCOL = 4
SAFE_FORMATS = ("json", "bytes", "npy", "arrow")
_MIN_PYARROW = (14, 0, 1)


class ValueTransferError(WfloError):
    """A ``--in`` or ``--out`` value could not cross the sandbox boundary (one line)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class UnsafeValue(ValueTransferError):
    """The sandbox sent a value in a format the host refuses to decode (e.g. pickle)."""


def encode_input(name: str, value: Any) -> dict[str, str]:
    """A host value for ``--in`` -> ``{format: "pickle", data: base64}``."""
    try:
        raw = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        raise ValueTransferError(
            name, f"cannot send {name}: {_type_name(value)} cannot be pickled ({exc})"
        ) from None
    return {"format": "pickle", "data": b64encode(raw)}


def encode_inputs(values: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {name: encode_input(name, value) for name, value in values.items()}


def decode_output(name: str, payload: Any) -> Any:
    """One ``--out`` payload from the agent -> the host value.

    Raises ``ValueTransferError`` when the sandbox refused the value (its one-line error),
    ``UnsafeValue`` for any format outside ``SAFE_FORMATS``.
    """
    if not isinstance(payload, Mapping):
        raise UnsafeValue(name, f"refused {name}: the sandbox sent a malformed value")
    type_text = _describe_type(payload.get("type"))
    if "error" in payload:
        raise ValueTransferError(name, _clip(str(payload["error"])))
    fmt = payload.get("format")
    if fmt not in SAFE_FORMATS:
        raise UnsafeValue(
            name,
            f"refused {name} ({type_text}): format {_clip(repr(fmt), 40)} is not a safe format "
            f"({', '.join(SAFE_FORMATS)}); values from the sandbox are never unpickled",
        )
    data = payload.get("data")
    try:
        if fmt == "json":
            if not isinstance(data, str):
                raise ValueError("json data must be text")
            return json.loads(data)
        if not isinstance(data, str):
            raise ValueError(f"{fmt} data must be base64 text")
        raw = b64decode(data)
        if fmt == "bytes":
            return raw
        if fmt == "npy":
            return _decode_npy(name, raw, payload.get("kind"))
        return _decode_arrow(name, raw, payload)
    except ValueTransferError:
        raise
    except (ProtocolError, ValueError, TypeError, OSError) as exc:
        raise ValueTransferError(
            name, f"cannot decode {name} ({type_text}, {fmt}): {_clip(str(exc))}"
        ) from None


def decode_outputs(payloads: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """All ``--out`` payloads -> (values by name, one-line errors by name)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, payload in payloads.items():
        try:
            values[name] = decode_output(name, payload)
        except ValueTransferError as exc:
            errors[name] = str(exc)
    return values, errors


def _decode_npy(name: str, raw: bytes, kind: Any) -> Any:
    try:
        import numpy
    except ImportError:
        raise ValueTransferError(
            name, f"cannot decode {name}: it is a numpy array and numpy is not installed here"
        ) from None
    array = numpy.load(io.BytesIO(raw), allow_pickle=False)
    if not isinstance(array, numpy.ndarray):
        raise ValueError("not a single .npy array")
    return array[()] if kind == "scalar" and array.ndim == 0 else array


def _decode_arrow(name: str, raw: bytes, payload: Mapping[str, Any]) -> Any:
    try:
        importlib.import_module("pandas")  # to_pandas needs it: fail with our message
        pyarrow = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.ipc")
    except ImportError as exc:
        raise ValueTransferError(
            name,
            f"cannot decode {name}: it is a pandas value and {exc.name or 'pandas/pyarrow'} "
            "is not installed here",
        ) from None
    version = tuple(int(p) for p in pyarrow.__version__.split(".")[:3] if p.isdigit())
    if version < _MIN_PYARROW:
        raise UnsafeValue(
            name,
            f"refused {name}: pyarrow {pyarrow.__version__} may unpickle extension types; "
            "upgrade to pyarrow>=14.0.1",
        )
    try:
        table = pyarrow.ipc.open_stream(pyarrow.BufferReader(raw)).read_all()
        frame = table.to_pandas()
    except pyarrow.ArrowException as exc:
        raise ValueError(str(exc)) from None
    if payload.get("kind") == "series":
        series = frame.iloc[:, 0]
        series.name = payload.get("series_name")
        return series
    return frame


def _type_name(value: Any) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _describe_type(type_text: Any) -> str:
    return _clip(str(type_text), 80) if isinstance(type_text, str) and type_text else "unknown type"


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
