"""State files hold data, never code: the format of what a hospital stores between calls.

The ledger keeps every release it made and the secure store every answer of a secure
phase, so that a repeat returns the first answer. Both used to pickle them, and unpickling
runs whatever a file says: a tampered or restored ledger became code execution inside the
datasite (issue 27). This is a JSON encoding of plain data instead:

- JSON's own values (str, int, float with NaN and infinities, bool, None, lists);
- dicts with any keys of these kinds, tuples, bytes, numpy arrays and scalars (of a fixed
  list of numeric dtypes), each as a small tagged object;
- frozen dataclasses only of the `kinds` the reader names (a secure store names its round
  keys and adverts), rebuilt field by field; any other class is refused.

Decoding builds nothing but these values, so a file can at worst hold wrong data. Old
files are read once through `legacy_loads`, an unpickler that accepts only numpy's array
and scalar reconstructors, builtin containers and the named dataclasses, and refuses every
other global (so a crafted pickle fails instead of running).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["StoredFormatError", "dumps", "legacy_loads", "loads", "is_legacy"]

# Array dtypes a stored value may hold: numbers and booleans, never objects.
DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)
MAX_DEPTH = 32
_TAG = "$"


class StoredFormatError(ValueError):
    """A stored value that is not this format's plain data."""


def dumps(value: Any, kinds: Iterable[type] = ()) -> bytes:
    """`value` as UTF-8 JSON; dataclasses must be of `kinds`."""
    allowed = {kind.__name__: kind for kind in kinds}
    return json.dumps(_encode(value, allowed, 0), separators=(",", ":")).encode("utf-8")


def loads(raw: bytes, kinds: Iterable[type] = ()) -> Any:
    """The value `dumps` wrote; StoredFormatError for anything else."""
    allowed = {kind.__name__: kind for kind in kinds}
    try:
        tree = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise StoredFormatError(f"not a stored value: {type(error).__name__}") from None
    return _decode(tree, allowed, 0)


def is_legacy(raw: bytes) -> bool:
    """Whether `raw` is a pickle (protocol 2 and later start with 0x80)."""
    return bytes(raw[:1]) == b"\x80"


def _encode(value: Any, kinds: dict[str, type], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise StoredFormatError("a stored value is nested too deeply.")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float) and not isinstance(value, np.generic):
        return value if type(value) in (int, float) else _scalar(value)
    if isinstance(value, np.generic | np.ndarray):
        return _array(np.asarray(value), scalar=isinstance(value, np.generic))
    if isinstance(value, bytes | bytearray):
        return {_TAG: "bytes", "b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list):
        return [_encode(v, kinds, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(v, kinds, depth + 1) for v in value]}
    if isinstance(value, dict):
        pairs = [
            [_encode(k, kinds, depth + 1), _encode(v, kinds, depth + 1)] for k, v in value.items()
        ]
        return {_TAG: "dict", "pairs": pairs}
    if dataclasses.is_dataclass(value) and kinds.get(type(value).__name__) is type(value):
        fields = {
            f.name: _encode(getattr(value, f.name), kinds, depth + 1)
            for f in dataclasses.fields(value)
        }
        return {_TAG: "data", "kind": type(value).__name__, "fields": fields}
    raise StoredFormatError(f"a {type(value).__name__} cannot be stored as plain data.")


def _scalar(value: int | float) -> Any:
    """A subclass of int or float (an IntEnum, say) is stored as the plain number."""
    return int(value) if isinstance(value, int) else float(value)


def _array(array: np.ndarray, *, scalar: bool) -> dict[str, Any]:
    dtype = array.dtype.name
    if dtype not in DTYPES:
        raise StoredFormatError(f"arrays of {dtype} cannot be stored.")
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        _TAG: "scalar" if scalar else "array",
        "dtype": dtype,
        "shape": list(array.shape),
        "b64": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def _decode(tree: Any, kinds: dict[str, type], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise StoredFormatError("a stored value is nested too deeply.")
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list):
        return [_decode(v, kinds, depth + 1) for v in tree]
    if not isinstance(tree, dict):
        raise StoredFormatError("not a stored value.")
    tag = tree.get(_TAG)
    try:
        if tag == "bytes":
            return base64.b64decode(tree["b64"], validate=True)
        if tag == "tuple":
            return tuple(_decode(v, kinds, depth + 1) for v in tree["items"])
        if tag == "dict":
            return {
                _key(_decode(k, kinds, depth + 1)): _decode(v, kinds, depth + 1)
                for k, v in tree["pairs"]
            }
        if tag in ("array", "scalar"):
            return _from_array(tree)
        if tag == "data" and tree.get("kind") in kinds:
            kind = kinds[tree["kind"]]
            fields = {f.name for f in dataclasses.fields(kind)}
            values = {k: _decode(v, kinds, depth + 1) for k, v in tree["fields"].items()}
            if set(values) != fields:
                raise StoredFormatError(f"a stored {kind.__name__} has other fields.")
            return kind(**values)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
        if isinstance(error, StoredFormatError):
            raise
        raise StoredFormatError(f"a malformed stored {tag}.") from None
    raise StoredFormatError(f"an unknown stored kind {str(tag)[:40]!r}.")


def _key(key: Any) -> Any:
    if isinstance(key, list):  # unhashable: only a file this module did not write
        raise StoredFormatError("a stored dict key is a list.")
    return key


def _from_array(tree: dict[str, Any]) -> Any:
    dtype = tree["dtype"]
    if dtype not in DTYPES:
        raise StoredFormatError(f"arrays of {str(dtype)[:20]} cannot be stored.")
    shape = tuple(int(s) for s in tree["shape"])
    raw = base64.b64decode(tree["b64"], validate=True)
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    array = array.reshape(shape)
    return array[()] if tree[_TAG] == "scalar" else array


# -- old files ---------------------------------------------------------------------------------

_NUMPY_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)
# Containers only: each builds from objects the pickle already holds, so it takes no more
# memory than the file's own bytes. `bytearray` is not among them: `bytearray(10**11)`
# is 20 bytes of pickle and 100 GB of zeros (no stored value was ever a bytearray).
_BUILTINS = frozenset({"set", "frozenset", "tuple", "list", "dict", "complex"})
_RECONSTRUCT = "_reconstruct"


class _ArrayClass:
    """What a pickle's reference to `numpy.ndarray` becomes: an argument for numpy's
    `_reconstruct` only. Called, as `numpy.ndarray(shape)`, it would allocate any shape the
    pickle names; it refuses instead."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise StoredFormatError("a stored pickle builds an array from a shape, not from data.")


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(numpy_reconstruct: Any) -> Any:
    """numpy's `_reconstruct(ndarray, (0,), b"b")`, as every pickled array begins; its data
    and real shape come next from the pickle's own bytes (`__setstate__` checks they match).
    Any other shape would allocate from a number the pickle names: refused."""

    def reconstruct(kind: Any, shape: Any, dtype: Any) -> Any:
        if kind is not _ARRAY_CLASS or tuple(shape) != (0,):
            raise StoredFormatError("a stored pickle builds an array from a shape, not from data.")
        return numpy_reconstruct(np.ndarray, (0,), dtype)

    return reconstruct


class _Restricted(pickle.Unpickler):
    def __init__(self, raw: bytes, kinds: dict[tuple[str, str], type]) -> None:
        super().__init__(io.BytesIO(raw))
        self.kinds = kinds

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            found = super().find_class(module, name)
            if name == "ndarray":
                return _ARRAY_CLASS
            return _reconstruct(found) if name == _RECONSTRUCT else found
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in self.kinds:
            return self.kinds[(module, name)]
        raise StoredFormatError(f"a stored pickle names {module}.{name}, which is not data.")


def legacy_loads(raw: bytes, kinds: Iterable[type] = ()) -> Any:
    """An old pickled value, read without running anything it names (see the docstring)."""
    allowed = {(kind.__module__, kind.__qualname__): kind for kind in kinds}
    try:
        return _Restricted(bytes(raw), allowed).load()
    except StoredFormatError:
        raise
    except Exception as error:
        raise StoredFormatError(f"an unreadable stored pickle: {type(error).__name__}") from None
