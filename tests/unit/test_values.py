"""Values across the sandbox boundary: safe formats out, pickle only in, never back.

The agent-side encoder (``sandbox/agent/out_values.py``) is stdlib code, so it is exercised
here on the host too: what it produces must decode with ``sandbox/values.py``.
"""

from __future__ import annotations

import base64
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from wflo_jupyter.core.errors import WfloError
from wflo_jupyter.sandbox.agent import out_values
from wflo_jupyter.sandbox.values import (
    UnsafeValue,
    ValueTransferError,
    decode_output,
    decode_outputs,
    encode_input,
    encode_inputs,
)


def round_trip(value: Any, name: str = "v") -> Any:
    return decode_output(name, out_values.encode_value(name, value))


@pytest.mark.parametrize(
    "value",
    [
        "text ✓",
        42,
        -(10**30),
        1.5,
        True,
        None,
        [1, "a", None, [2.5, {"k": [True]}]],
        {"a": 1, "b": {"c": [1, 2]}},
        [],
        {},
    ],
)
def test_json_values_round_trip(value: Any) -> None:
    payload = out_values.encode_value("v", value)
    assert payload["format"] == "json"
    assert round_trip(value) == value


def test_bytes_round_trip() -> None:
    assert round_trip(bytes(range(256))) == bytes(range(256))
    assert round_trip(bytearray(b"ab")) == b"ab"


def test_numpy_arrays_round_trip_without_pickle() -> None:
    import numpy

    array = numpy.arange(12, dtype="float32").reshape(3, 4)
    payload = out_values.encode_value("a", array)
    assert payload["format"] == "npy"
    back = decode_output("a", payload)
    assert back.dtype == array.dtype
    assert (back == array).all()
    scalar = round_trip(numpy.int64(7))
    assert isinstance(scalar, numpy.int64)
    assert scalar == 7
    refused = out_values.encode_value("o", numpy.array([object()], dtype=object))
    assert "cannot be sent without pickle" in refused["error"]


def test_pandas_round_trip_through_arrow() -> None:
    import pandas
    import pyarrow  # noqa: F401

    frame = pandas.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 20, 30])
    payload = out_values.encode_value("df", frame)
    assert payload["format"] == "arrow"
    assert payload["kind"] == "dataframe"
    pandas.testing.assert_frame_equal(decode_output("df", payload), frame)
    series = pandas.Series([1.5, 2.5], name="price")
    back = round_trip(series)
    pandas.testing.assert_series_equal(back, series)
    unnamed = round_trip(pandas.Series([1, 2]))
    assert unnamed.name is None
    assert list(unnamed) == [1, 2]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        (object(), "object"),
        ([1, {2}], "list holding a set"),
        ({1: "a"}, "dict with a key of type int"),
        ([{"a": {2: 1}}], "list holding a dict with a key of type int"),
    ],
)
def test_unsafe_values_are_refused_with_one_line(value: Any, what: str) -> None:
    payload = out_values.encode_value("thing", value)
    assert payload["error"] == (
        f"cannot return thing: {what} is not JSON, a DataFrame/Series, a numpy array or bytes"
    )
    with pytest.raises(ValueTransferError) as info:
        decode_output("thing", payload)
    assert str(info.value) == payload["error"]
    assert "\n" not in str(info.value)


def test_self_referencing_list_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert "self-referencing list" in out_values.encode_value("loop", loop)["error"]


class _Pwn:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = {
        "format": "pickle",
        "type": "builtins.dict",
        "data": base64.b64encode(pickle.dumps(_Pwn(marker))).decode(),
    }
    with pytest.raises(UnsafeValue) as info:
        decode_output("secret", crafted)
    message = str(info.value)
    assert message.startswith("refused secret (builtins.dict): format 'pickle' is not a safe")
    assert "never unpickled" in message
    assert "\n" not in message
    assert isinstance(info.value, WfloError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"format": "marshal", "data": ""},
        {"format": None, "data": ""},
        {"data": "gASVAAAAAAAAAAB9lC4="},
        "not a mapping",
    ],
)
def test_other_formats_are_unsafe(payload: Any) -> None:
    with pytest.raises(UnsafeValue, match="refused x"):
        decode_output("x", payload)


def test_npy_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    import io

    import numpy

    buffer = io.BytesIO()
    numpy.save(buffer, numpy.array([_Pwn(tmp_path / "npy-pwned")], dtype=object))
    payload = {
        "format": "npy",
        "type": "numpy.ndarray",
        "data": base64.b64encode(buffer.getvalue()).decode(),
    }
    with pytest.raises(ValueTransferError, match="cannot decode arr"):
        decode_output("arr", payload)
    assert not (tmp_path / "npy-pwned").exists()


def test_garbage_payloads_give_one_line_errors() -> None:
    with pytest.raises(ValueTransferError, match="cannot decode j"):
        decode_output("j", {"format": "json", "data": "{nope"})
    with pytest.raises(ValueTransferError, match="cannot decode b"):
        decode_output("b", {"format": "bytes", "data": "***"})
    import pyarrow  # noqa: F401

    with pytest.raises(ValueTransferError, match="cannot decode t"):
        decode_output("t", {"format": "arrow", "data": base64.b64encode(b"junk").decode()})


def test_decode_outputs_splits_values_and_errors() -> None:
    values, errors = decode_outputs(
        {
            "ok": out_values.encode_value("ok", [1]),
            "bad": out_values.encode_value("bad", {1}),
            "evil": {"format": "pickle", "data": ""},
        }
    )
    assert values == {"ok": [1]}
    assert set(errors) == {"bad", "evil"}


def test_inputs_are_pickled() -> None:
    payload = encode_input("a", {"k": [1, 2]})
    assert payload["format"] == "pickle"
    assert pickle.loads(base64.b64decode(payload["data"])) == {"k": [1, 2]}
    assert set(encode_inputs({"a": 1, "b": 2})) == {"a", "b"}
    with pytest.raises(ValueTransferError, match="cannot send f: function cannot be pickled"):
        encode_input("f", lambda: 1)
