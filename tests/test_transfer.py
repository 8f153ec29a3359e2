"""The -i/-o format: round trips, refusals, and hostile files that must fail.

Pure: no sandbox.  The magic tests repeat the round trips through a real
kernel and a real sandbox.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from srt_kernel import transfer
from srt_kernel.transfer import MAGIC, TransferError, dumps, loads


def _file(header: object, blob: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack(">Q", len(raw)) + raw + blob


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# Every supported type comes back equal and of the same type.
@pytest.mark.parametrize(
    "value",
    [
        # JSON-compatible values, and the floats JSON cannot spell
        None,
        True,
        0,
        -(2**100),
        1.25,
        float("inf"),
        float("-inf"),
        float("nan"),
        "text ✓ \x00 \U0001f600",
        [1, [2, [3]], "x"],
        (1, (2, 3)),
        {"a": 1, 2: None, 1.5: [True], None: "n", True: "t"},
        {},
        [],
        # binary data
        b"",
        b"\x00\xff" * 1000,
        bytearray(b"abc"),
        # NumPy arrays of plain dtypes, any byte order, and scalars
        np.arange(24, dtype="<i2").reshape(2, 3, 4),
        np.array([1.5, np.nan, -0.0], dtype=">f8"),
        np.array([1 + 2j], dtype="c16"),
        np.array([True, False]),
        np.array(["a", "bcd"]),
        np.array([b"x", b"yz"]),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[s]"),
        np.array([5], dtype="timedelta64[ms]"),
        np.zeros((0, 3), dtype="u8"),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.float32(2.5),
        np.int64(-7),
        np.bool_(True),
        # pandas frames and series: NumPy columns, strings, nullable
        # integers, categories, datetimes, a default and a named index
        pd.DataFrame(
            {
                "i": [1, 2, 3],
                "f": [0.5, np.nan, 2.0],
                "s": ["a", None, "c"],
                "n": pd.array([1, None, 3], dtype="Int64"),
                "b": pd.array([True, None, False], dtype="boolean"),
                "t": pd.to_datetime(["2020-01-01", None, "2021-06-01"]),
            }
        ),
        pd.DataFrame({"x": [1, 2]}, index=pd.Index(["r1", "r2"], name="row")),
        pd.DataFrame({"x": [1, 2], 3: [4, 5]}, index=pd.Index([7, 7])),
        pd.DataFrame(),
        pd.DataFrame({"c": pd.Categorical(["a", "b", "a"])}),
        pd.DataFrame({"o": [1, "two", None]}, dtype=object),
        pd.Series([1.0, 2.0], name="s", index=pd.RangeIndex(10, 14, 2)),
        # containers of the above
        {"arr": np.arange(3), "df": pd.DataFrame({"a": [1]}), "raw": b"\x01"},
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip(value: Any) -> None:
    _same(value, loads(dumps(value)))


def test_loaded_arrays_are_writable_copies() -> None:
    back = loads(dumps(np.arange(4)))
    back[0] = 99
    assert back.flags.writeable and back[0] == 99


# Types that cannot cross are refused, naming the type and the way out.
@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({1, 2}, "type set"),
        (frozenset(), "type frozenset"),
        (object(), "type object"),
        (len, "builtin_function_or_method"),
        (1 + 2j, "type complex"),
        (np.array([object()], dtype=object), "dtype object"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), "cannot be copied"),
        ({(1, 2): 3}, "key of type tuple"),
        (
            pd.DataFrame({"a": [1]}).set_index(pd.MultiIndex.from_tuples([(1, 2)])),
            "MultiIndex",
        ),
        (pd.DataFrame({"t": pd.date_range("2020", periods=2, tz="UTC")}), "datetime64"),
        (pd.DataFrame({"o": [object()]}), "type object"),
        (Path("/x"), "pathlib"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_types_are_refused(value: Any, named: str) -> None:
    with pytest.raises(TransferError, match=named):
        dumps(value, name="v")


def test_self_reference_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TransferError, match="nested deeper"):
        dumps(loop)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /nonexistent-marker",))


# Hostile or broken files: each is refused, and nothing in them runs.
@pytest.mark.parametrize(
    ("data", "why"),
    [
        # not our format at all: a pickle that would run a command
        (pickle.dumps(_Boom()), "transfer header"),
        (b"", "transfer header"),
        (MAGIC + b"\x00\x00", "truncated"),
        # the header length lies
        (MAGIC + struct.pack(">Q", 10**9) + b"{}", "header length"),
        (MAGIC + struct.pack(">Q", 3) + b"{\xff}", "strict JSON"),
        # JSON that is not strict, or not our shape
        (MAGIC + struct.pack(">Q", 14) + b'{"value": NaN}', "non-JSON constant"),
        (_file({"value": 1, "extra": 2}), "exactly a 'value' key"),
        (_file([1]), "exactly a 'value' key"),
        (_file({"value": {"t": "pickle", "v": "gASV"}}), "node type 'pickle'"),
        (_file({"value": {"t": "float", "v": "1e5"}}), "not nan, inf"),
        (
            _file({"value": {"t": "dict", "v": [[{"t": "list", "v": []}, 1]]}}),
            "dict key",
        ),
        # arrays whose dtype is object or structured, or that lie about size
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "|O",
                        "shape": [1],
                        "o": 0,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "not a plain dtype",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "O8",
                        "shape": [1],
                        "o": 0,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "not a plain dtype",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "[('a', 'O')]",
                        "shape": [1],
                        "o": 0,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "not a plain dtype",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "<f8, <i4",
                        "shape": [1],
                        "o": 0,
                        "n": 12,
                    }
                },
                b"\0" * 12,
            ),
            "not a plain dtype",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "<f8",
                        "shape": [2],
                        "o": 0,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "needs 16 bytes",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "<f8",
                        "shape": [-1],
                        "o": 0,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "non-negative",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "ndarray",
                        "dtype": "<f8",
                        "shape": [1],
                        "o": 4,
                        "n": 8,
                    }
                },
                b"\0" * 8,
            ),
            "outside the file",
        ),
        (_file({"value": {"t": "bytes", "o": -1, "n": 1}}, b"x"), "outside the file"),
        (_file({"value": {"t": "bytes", "o": True, "n": 1}}, b"x"), "two integers"),
        # pandas parts with a dtype outside the allowlist
        (
            _file(
                {
                    "value": {
                        "t": "series",
                        "name": None,
                        "values": {
                            "t": "values",
                            "dtype": "object; import os",
                            "v": [],
                        },
                        "index": {
                            "t": "range",
                            "start": 0,
                            "stop": 0,
                            "step": 1,
                            "name": None,
                        },
                    }
                }
            ),
            "pandas dtype",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "series",
                        "name": None,
                        "values": {"t": "values", "dtype": "Int64", "v": ["x"]},
                        "index": {
                            "t": "range",
                            "start": 0,
                            "stop": 1,
                            "step": 1,
                            "name": None,
                        },
                    }
                }
            ),
            "cannot hold",
        ),
        (
            _file(
                {
                    "value": {
                        "t": "series",
                        "name": None,
                        "values": {"t": "values", "dtype": "object", "v": [1]},
                        "index": {
                            "t": "range",
                            "start": 0,
                            "stop": 1,
                            "step": 0,
                            "name": None,
                        },
                    }
                }
            ),
            "range index",
        ),
        # too deep
        (
            _file({"value": json.loads('{"t": "list", "v": [' * 150 + "]}" * 150)}),
            "nested deeper",
        ),
        (
            MAGIC + struct.pack(">Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
            "strict JSON|nested too deeply",
        ),
    ],
)
def test_hostile_files_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(TransferError, match=why) as info:
        loads(data)
    assert "refused and nothing in it was used" in str(info.value)
    assert not os.path.exists("/nonexistent-marker")


def test_size_limit_is_checked_first() -> None:
    data = dumps(b"x" * 1000)
    assert loads(data, max_bytes=len(data)) == b"x" * 1000
    with pytest.raises(TransferError, match="over the limit"):
        loads(data, max_bytes=len(data) - 1)


def test_node_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "MAX_NODES", 10)
    with pytest.raises(TransferError, match="more than 10 items"):
        dumps(list(range(20)))
    data = _file({"value": {"t": "list", "v": list(range(20))}})
    with pytest.raises(TransferError, match="more than 10 items"):
        loads(data)
