"""The ``-i``/``-o`` format of ``%%sandbox``: data in, data out, never code.

A value crosses the sandbox boundary as one file written by :func:`dumps`
and read by :func:`loads`.  Reading never runs code that came with the
data: there is no pickle, no ``eval``, no import by name and no
constructor chosen by the file.  The file says which of a fixed set of
data shapes it holds, and the reader builds that shape itself.

Layout::

    b"SRTX1\\n"                 magic and version
    8 bytes, big-endian         length H of the header
    H bytes                     the header: UTF-8 JSON {"value": NODE}
    the rest                    the blob: raw bytes that NODEs point into

A NODE is a JSON ``null``, boolean, integer, finite number or string for
those Python values, or an object with a ``"t"`` (type) key:

* ``float``: ``{"t": "float", "v": "nan" | "inf" | "-inf"}``;
* ``list``, ``tuple``: ``{"t": ..., "v": [NODE, ...]}``;
* ``dict``: ``{"t": "dict", "v": [[KEY, NODE], ...]}``, keys being
  ``None``, booleans, integers, floats or strings;
* ``bytes``, ``bytearray``: ``{"t": ..., "o": offset, "n": length}`` into
  the blob;
* ``ndarray`` and ``npscalar``: ``{"t": ..., "dtype": "<f8", "shape":
  [...], "o": ..., "n": ...}``; the dtype string must match a plain
  numeric, boolean, fixed-width string or datetime dtype (never object,
  never structured), checked before NumPy sees it;
* ``series`` and ``dataframe``: pandas objects as columns of the node
  types above (``ndarray`` for NumPy dtypes, ``values`` with a dtype name
  from :data:`PANDAS_DTYPES` otherwise) and a ``range`` or ``index`` node.

Everything else is refused with a :class:`TransferError` that names the
type.  :func:`loads` checks sizes, offsets, shapes, depth and node counts
before it builds anything, and any malformed input is a
:class:`TransferError`.  The module is pure (bytes in, values out); NumPy
and pandas are imported only when a value or file needs them.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import struct
import sys
from typing import Any

from srt_kernel.errors import SrtKernelError
from srt_kernel.log import get_logger

logger = get_logger(__name__)

MAGIC = b"SRTX1\n"
_LEN = struct.Struct(">Q")

#: Default size limit of one transfer file (bytes).
MAX_BYTES = 512 * 1024 * 1024
#: Limit of the JSON header (bytes).
MAX_HEADER = 64 * 1024 * 1024
#: Nesting depth of lists, tuples and dicts.
MAX_DEPTH = 100
#: Number of nodes in one file.
MAX_NODES = 5_000_000
#: Dimensions of an array.
MAX_NDIM = 32

#: Dtype strings accepted from a file, checked before NumPy parses them:
#: booleans, integers, floats, complex numbers, fixed-width byte and
#: unicode strings, and datetimes and durations with a plain unit.
_DTYPE = re.compile(
    r"[<>|=]?(?:b1|i[1248]|u[1248]|f[248]|c(?:8|16)|[SU][1-9][0-9]{0,7}"
    r"|[mM]8\[(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])"
)
_DTYPE_KINDS = frozenset("biufcSUmM")

#: pandas dtypes (by name) that cross as a list of plain values.
PANDAS_DTYPES = frozenset(
    {
        "object",
        "str",
        "string",
        "boolean",
        "category",
        "Int8",
        "Int16",
        "Int32",
        "Int64",
        "UInt8",
        "UInt16",
        "UInt32",
        "UInt64",
        "Float32",
        "Float64",
    }
)


def _pandas() -> Any:
    # Imported by name: pandas ships no type hints, and is only needed when
    # a value or a file holds a pandas object.
    return importlib.import_module("pandas")


class TransferError(SrtKernelError):
    """A value cannot be carried, or a transfer file is not valid."""


# --------------------------------------------------------------------------
# Writing


class _Writer:
    def __init__(self) -> None:
        self.blob = bytearray()
        self.nodes = 0

    def put(self, data: bytes) -> tuple[int, int]:
        offset = len(self.blob)
        self.blob += data
        return offset, len(data)

    def node(self, value: Any, depth: int, where: str) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise TransferError(
                f"{where} holds more than {MAX_NODES} items; carry it as a "
                "NumPy array or a DataFrame instead."
            )
        if depth > MAX_DEPTH:
            raise TransferError(
                f"{where} is nested deeper than {MAX_DEPTH} levels (or refers to "
                "itself); flatten it before copying it."
            )
        numpy = sys.modules.get("numpy")
        pandas = sys.modules.get("pandas")
        if value is None or isinstance(value, bool):
            return value
        if numpy is not None and isinstance(value, numpy.generic):
            return self.array(numpy.asarray(value), where, tag="npscalar")
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            return {"t": "float", "v": repr(float(value))}
        if isinstance(value, str):
            return str(value)
        if isinstance(value, bytes | bytearray):
            offset, length = self.put(bytes(value))
            tag = "bytes" if isinstance(value, bytes) else "bytearray"
            return {"t": tag, "o": offset, "n": length}
        if isinstance(value, list | tuple):
            tag = "list" if isinstance(value, list) else "tuple"
            items = [
                self.node(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value)
            ]
            return {"t": tag, "v": items}
        if isinstance(value, dict):
            pairs = []
            for key, item in value.items():
                if key is not None and not isinstance(key, str | int | float):
                    raise TransferError(
                        f"{where} has a key of type {type(key).__name__} "
                        f"({key!r}); only str, int, float, bool and None keys "
                        "can be copied."
                    )
                pairs.append(
                    [
                        self.node(key, depth + 1, where),
                        self.node(item, depth + 1, f"{where}[{key!r}]"),
                    ]
                )
            return {"t": "dict", "v": pairs}
        if numpy is not None and isinstance(value, numpy.ndarray):
            return self.array(value, where, tag="ndarray")
        if pandas is not None and isinstance(value, pandas.DataFrame):
            return self.dataframe(value, where)
        if pandas is not None and isinstance(value, pandas.Series):
            return {
                "t": "series",
                "name": self.label(value.name, where),
                "values": self.column(value, f"{where} (a Series)", depth),
                "index": self.index(value.index, where, depth),
            }
        raise TransferError(
            f"{where} is of type {_type_name(value)}, which cannot be copied "
            "across the sandbox: only None, bool, int, float, str, bytes, "
            "lists, tuples, dicts of these, NumPy arrays of plain dtypes and "
            "pandas Series and DataFrames can (never pickled objects). "
            "Convert it to one of these first."
        )

    def array(self, array: Any, where: str, *, tag: str) -> dict[str, Any]:
        dtype = array.dtype
        text = dtype.str
        if dtype.hasobject or dtype.fields is not None or not _DTYPE.fullmatch(text):
            raise TransferError(
                f"{where} is a NumPy array of dtype {dtype} ({text}), which "
                "cannot be copied: only boolean, integer, float, complex, "
                "fixed-width string and datetime dtypes can. Convert it, "
                "for example with .astype(str) or .tolist()."
            )
        import numpy

        data = numpy.ascontiguousarray(array).tobytes()
        offset, length = self.put(data)
        return {
            "t": tag,
            "dtype": text,
            "shape": [int(n) for n in array.shape],
            "o": offset,
            "n": length,
        }

    def label(self, label: Any, where: str) -> Any:
        if label is None or isinstance(label, bool | int | float | str):
            return self.node(label, 0, where)
        raise TransferError(
            f"{where} has a label of type {_type_name(label)} ({label!r}); only "
            "str, int, float, bool and None labels can be copied. Rename it."
        )

    def column(self, series: Any, where: str, depth: int) -> Any:
        import numpy

        dtype = series.dtype
        if isinstance(dtype, numpy.dtype) and not dtype.hasobject:
            return self.array(series.to_numpy(), where, tag="ndarray")
        name = str(dtype)
        if name not in PANDAS_DTYPES:
            raise TransferError(
                f"{where} has the pandas dtype {name}, which cannot be copied; "
                f"convert it to a NumPy dtype or one of {sorted(PANDAS_DTYPES)}."
            )
        values = [_plain_missing(v) for v in series.tolist()]
        items = [self.node(v, depth + 2, f"{where}[{i}]") for i, v in enumerate(values)]
        return {"t": "values", "dtype": name, "v": items}

    def index(self, index: Any, where: str, depth: int) -> Any:
        pandas = _pandas()

        if isinstance(index, pandas.MultiIndex):
            raise TransferError(
                f"{where} has a MultiIndex, which cannot be copied; call "
                ".reset_index() first."
            )
        if isinstance(index, pandas.RangeIndex):
            return {
                "t": "range",
                "start": int(index.start),
                "stop": int(index.stop),
                "step": int(index.step),
                "name": self.label(index.name, f"{where}.index"),
            }
        return {
            "t": "index",
            "name": self.label(index.name, f"{where}.index"),
            "values": self.column(index.to_series(), f"{where}.index", depth),
        }

    def dataframe(self, frame: Any, where: str) -> dict[str, Any]:
        pandas = _pandas()

        if isinstance(frame.columns, pandas.MultiIndex):
            raise TransferError(
                f"{where} has MultiIndex columns, which cannot be copied; "
                "flatten the column names first."
            )
        columns = []
        for position in range(frame.shape[1]):
            label = frame.columns[position]
            column = frame.iloc[:, position]
            columns.append(
                [
                    self.label(label, f"{where} column {label!r}"),
                    self.column(column, f"{where} column {label!r}", 1),
                ]
            )
        return {
            "t": "dataframe",
            "columns": columns,
            "index": self.index(frame.index, where, 1),
        }


def _plain_missing(value: Any) -> Any:
    """pandas' missing markers (``pd.NA``, ``NaT``) as None."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and (value is pandas.NA or value is pandas.NaT):
        return None
    return value


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return (
        kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    )


def dumps(value: Any, *, name: str = "the value") -> bytes:
    """Encode ``value``; :class:`TransferError` names what cannot be carried."""
    writer = _Writer()
    node = writer.node(value, 0, name)
    header = json.dumps({"value": node}, allow_nan=False, separators=(",", ":"))
    raw = header.encode("utf-8")
    return MAGIC + _LEN.pack(len(raw)) + raw + bytes(writer.blob)


# --------------------------------------------------------------------------
# Reading


def _bad(message: str) -> TransferError:
    return TransferError(
        f"the transfer file is not valid ({message}); it was refused and "
        "nothing in it was used."
    )


def _reject_constant(text: str) -> Any:
    raise _bad(f"it holds the non-JSON constant {text}")


class _Reader:
    def __init__(self, blob: memoryview) -> None:
        self.blob = blob
        self.nodes = 0

    def bytes_at(self, node: dict[str, Any]) -> bytes:
        offset, length = node.get("o"), node.get("n")
        if not (isinstance(offset, int) and isinstance(length, int)):
            raise _bad("a blob reference is not two integers")
        if isinstance(offset, bool) or isinstance(length, bool):
            raise _bad("a blob reference is not two integers")
        if offset < 0 or length < 0 or offset + length > len(self.blob):
            raise _bad("a blob reference points outside the file")
        return bytes(self.blob[offset : offset + length])

    def node(self, node: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _bad(f"it holds more than {MAX_NODES} items")
        if depth > MAX_DEPTH:
            raise _bad(f"it is nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, bool | int | str):
            return node
        if isinstance(node, float):
            return node
        if not isinstance(node, dict):
            raise _bad(f"a node of JSON type {type(node).__name__} is not allowed")
        tag = node.get("t")
        if tag == "float":
            text = node.get("v")
            if text not in ("nan", "inf", "-inf"):
                raise _bad(f"the float {text!r} is not nan, inf or -inf")
            return float(text)
        if tag in ("list", "tuple"):
            items = node.get("v")
            if not isinstance(items, list):
                raise _bad(f"a {tag} has no item list")
            values = [self.node(item, depth + 1) for item in items]
            return values if tag == "list" else tuple(values)
        if tag == "dict":
            return self.mapping(node, depth)
        if tag == "bytes":
            return self.bytes_at(node)
        if tag == "bytearray":
            return bytearray(self.bytes_at(node))
        if tag in ("ndarray", "npscalar"):
            array = self.array(node)
            return array[()] if tag == "npscalar" else array
        if tag == "series":
            return self.series(node, depth)
        if tag == "dataframe":
            return self.dataframe(node, depth)
        raise _bad(f"the node type {str(tag)[:40]!r} is unknown")

    def mapping(self, node: dict[str, Any], depth: int) -> dict[Any, Any]:
        pairs = node.get("v")
        if not isinstance(pairs, list):
            raise _bad("a dict has no pair list")
        out: dict[Any, Any] = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _bad("a dict entry is not a [key, value] pair")
            key = self.node(pair[0], depth + 1)
            if key is not None and not isinstance(key, str | int | float):
                raise _bad(f"a dict key of type {type(key).__name__} is not allowed")
            out[key] = self.node(pair[1], depth + 1)
        return out

    def array(self, node: dict[str, Any]) -> Any:
        text, shape = node.get("dtype"), node.get("shape")
        if not isinstance(text, str) or not _DTYPE.fullmatch(text):
            raise _bad(
                f"the array dtype {str(text)[:40]!r} is not a plain dtype "
                "(object and structured dtypes are never read)"
            )
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_NDIM
            and all(_is_int(n) and n >= 0 for n in shape)
        ):
            raise _bad("the array shape is not a list of non-negative integers")
        import numpy

        dtype = numpy.dtype(text)
        if (
            dtype.hasobject
            or dtype.fields is not None
            or dtype.kind not in _DTYPE_KINDS
        ):
            raise _bad(f"the array dtype {text!r} is not a plain dtype")
        data = self.bytes_at(node)
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise _bad(
                f"the array of shape {shape} and dtype {text} needs "
                f"{count * dtype.itemsize} bytes, not {len(data)}"
            )
        return numpy.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()

    def label(self, node: Any) -> Any:
        value = self.node(node, 1)
        if value is not None and not isinstance(value, str | int | float):
            raise _bad(f"a label of type {type(value).__name__} is not allowed")
        return value

    def column(self, node: Any, depth: int) -> Any:
        pandas = _pandas()

        if not isinstance(node, dict):
            raise _bad("a column is not an object")
        if node.get("t") == "ndarray":
            array = self.array(node)
            if array.ndim != 1:
                raise _bad("a column is not one-dimensional")
            return pandas.Series(array, copy=False)
        if node.get("t") != "values":
            raise _bad("a column is neither an array nor a value list")
        dtype, items = node.get("dtype"), node.get("v")
        if dtype not in PANDAS_DTYPES:
            raise _bad(f"the pandas dtype {str(dtype)[:40]!r} is not allowed")
        if not isinstance(items, list):
            raise _bad("a column has no value list")
        values = [self.node(item, depth + 1) for item in items]
        if dtype == "object":
            return pandas.Series(values, dtype=object)
        try:
            return pandas.Series(values, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise _bad(f"a {dtype} column cannot hold its values ({exc})") from exc

    def index(self, node: Any, depth: int) -> Any:
        pandas = _pandas()

        if not isinstance(node, dict):
            raise _bad("an index is not an object")
        name = self.label(node.get("name"))
        if node.get("t") == "range":
            numbers = [node.get(k) for k in ("start", "stop", "step")]
            if not all(_is_int(n) for n in numbers) or numbers[2] == 0:
                raise _bad("a range index is not three integers with a step")
            return pandas.RangeIndex(*numbers, name=name)
        if node.get("t") == "index":
            return pandas.Index(self.column(node.get("values"), depth), name=name)
        raise _bad("an index is neither a range nor a value index")

    def series(self, node: dict[str, Any], depth: int) -> Any:
        values = self.column(node.get("values"), depth)
        index = self.index(node.get("index"), depth)
        if len(index) != len(values):
            raise _bad("a Series and its index differ in length")
        values.index = index
        values.name = self.label(node.get("name"))
        return values

    def dataframe(self, node: dict[str, Any], depth: int) -> Any:
        pandas = _pandas()

        columns = node.get("columns")
        if not isinstance(columns, list):
            raise _bad("a DataFrame has no column list")
        index = self.index(node.get("index"), depth)
        labels, data = [], {}
        for position, entry in enumerate(columns):
            if not (isinstance(entry, list) and len(entry) == 2):
                raise _bad("a DataFrame column is not a [label, values] pair")
            labels.append(self.label(entry[0]))
            column = self.column(entry[1], depth)
            if len(column) != len(index):
                raise _bad("a DataFrame column and the index differ in length")
            data[position] = column
        if not data:
            return pandas.DataFrame(index=index)
        # Columns keep their own default index until the frame exists, so
        # duplicate index labels cannot trigger an alignment.
        frame = pandas.DataFrame(data)
        frame.index = index
        frame.columns = pandas.Index(labels)
        return frame


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def loads(data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_BYTES) -> Any:
    """Decode a transfer file strictly; any fault is a :class:`TransferError`."""
    view = memoryview(data)
    if len(view) > max_bytes:
        raise _bad(f"it is {len(view)} bytes, over the limit of {max_bytes}")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise _bad("it does not start with the srt-kernel transfer header")
    start = len(MAGIC) + _LEN.size
    if len(view) < start:
        raise _bad("it is truncated")
    (length,) = _LEN.unpack(view[len(MAGIC) : start])
    if length > min(MAX_HEADER, len(view) - start):
        raise _bad("its header length is larger than the file or the limit")
    try:
        header = json.loads(
            bytes(view[start : start + length]).decode("utf-8"),
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"its header is not strict JSON: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {"value"}:
        raise _bad("its header is not an object with exactly a 'value' key")
    reader = _Reader(view[start + length :])
    try:
        return reader.node(header["value"], 0)
    except RecursionError as exc:
        raise _bad("it is nested too deeply") from exc
