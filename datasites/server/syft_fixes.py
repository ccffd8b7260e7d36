"""Workarounds for syft 0.9.5 defects, applied inside the hospital's datasite process.

Each fix is a narrow, idempotent patch with the defect it answers written next to it, so it
can be dropped the day syft fixes the cause. They run before the `Datasite` is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np

from datasites.runtime.cache import FRAME_DIGEST_ATTR

_BYTES_LIKE = (bytes, bytearray, memoryview, str)
# Blobs smaller than this deserialize in milliseconds: not worth holding.
_CACHE_MIN_BYTES = 1 << 20
DEFAULT_BLOB_CACHE_BYTES = 1 << 30
# Base64 text of the store's rows: an asset's mock or a small test split is 0.05-2 MB, and
# deserializing even a small DataFrame costs a parquet read (milliseconds) on every call.
_JSON_CACHE_MIN_CHARS = 1 << 14
DEFAULT_JSON_CACHE_CHARS = 1 << 28
# A datasite's API has a few hundred signatures; user code adds a few per study.
_SIGNATURE_CACHE_ENTRIES = 4096


def store_uuids_as_text() -> None:
    """Make syft's SQLite id columns TEXT, so no uuid is ever read back as a number.

    syft declares its id columns with SQLAlchemy's `UUID` type, which SQLite turns into a
    column of NUMERIC affinity: a random uuid4 whose hex reads as a number (all digits, or
    digits and one `e`; about 2 in a million) is stored as a REAL and every later read of
    that row fails ("'float' object has no attribute 'replace'"). A launch creates thousands
    of ids, so this broke about one launch in fifty. Emitting CHAR(32) for the type on
    SQLite gives the columns TEXT affinity; it must run before the datasite creates its
    tables (databases created earlier keep their columns).
    """
    import sqlalchemy as sa
    from sqlalchemy.ext.compiler import compiles

    @compiles(sa.UUID, "sqlite")
    def _uuid_as_text(type_: sa.UUID, compiler: object, **kw: object) -> str:
        return "CHAR(32)"


def skip_walking_bytes() -> None:
    """Stop syft from visiting every byte of a blob it reads, one Python object at a time.

    After every service call syft walks the result to stamp the server's id on each syft
    object in it (`attach_attribute_to_syft_object`). It treats any `Sequence` as a list of
    candidates, and `bytes` is a `Sequence`: the blob store's read returns the serialized
    asset as one `bytes` field, so each element was checked with a pydantic `isinstance`.
    For a PathMNIST asset, read twice per study call, that cost far more CPU than
    deserializing it (benchmarks/README.md, "Short rounds became affordable"). A string or a
    byte buffer can
    hold no syft object, so the walk skips them; everything else is walked as before.
    """
    from syft.service import service
    from syft.types import syft_object

    original: Callable[[Any, dict[str, Any]], None] = syft_object.attach_attribute_to_syft_object
    if getattr(original, "skips_bytes", False):
        return

    def attach(result: Any, attr_dict: dict[str, Any]) -> None:
        if isinstance(result, _BYTES_LIKE):
            return
        original(result, attr_dict)

    attach.skips_bytes = True  # type: ignore[attr-defined]
    # The original recurses through its module's global name, so both references change.
    syft_object.attach_attribute_to_syft_object = attach
    service.attach_attribute_to_syft_object = attach


class BlobCache:
    """Deserialized blobs by their exact serialized bytes, for data that cannot change.

    Only numpy arrays, dicts of arrays and plain scalars (the PathMNIST assets), and pandas
    DataFrames (the EHR assets) are kept. Arrays are made read-only, so no code run on them
    can alter what the next call reads (it gets an error instead); a DataFrame cannot be
    frozen, so each read gets its own deep copy (4 ms for a 12,000-row EHR table, against
    about 60 ms to deserialize it, several times a call). A hit requires the incoming bytes
    to equal the cached bytes exactly, so the cache can never answer with other data than syft would
    have deserialized, whoever asks; syft's permission checks ran before the bytes existed.
    Least recently used entries go first once `max_bytes` (serialized) is exceeded.
    """

    def __init__(
        self, max_bytes: int = DEFAULT_BLOB_CACHE_BYTES, min_bytes: int = _CACHE_MIN_BYTES
    ) -> None:
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self.hits = 0
        self._entries: OrderedDict[int, tuple[bytes | str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, raw: bytes | str, deserialize: Callable[[Any], Any]) -> Any:
        """What `deserialize(raw)` returns, from the cache when these bytes were seen."""
        if len(raw) < self.min_bytes:
            return deserialize(raw)
        key = hash(raw[:4096]) ^ len(raw)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == raw:
                self._entries.move_to_end(key)
                self.hits += 1
                return _fresh(entry[1])
        value = deserialize(raw)
        if _freeze(value):
            _label_frame(value, raw)
            with self._lock:
                self._entries[key] = (raw, value)
                self._evict()
            return _fresh(value)
        return value

    def _evict(self) -> None:
        total = sum(len(raw) for raw, _ in self._entries.values())
        while self._entries and total > self.max_bytes:
            _, (raw, _) = self._entries.popitem(last=False)
            total -= len(raw)


def _freeze(value: Any) -> bool:
    """Make `value`'s arrays read-only; False (and nothing changed) if it is not cacheable."""
    import pandas as pd

    if type(value) is pd.DataFrame:
        return True  # `_fresh` copies it for every reader
    if isinstance(value, np.ndarray):
        arrays = [value]
    elif isinstance(value, dict) and all(
        isinstance(v, np.ndarray | bool | int | float | str | None) for v in value.values()
    ):
        arrays = [v for v in value.values() if isinstance(v, np.ndarray)]
    else:
        return False
    if any(a.dtype == object for a in arrays):
        return False
    for array in arrays:
        array.flags.writeable = False
    return True


def _label_frame(value: Any, raw: bytes | str) -> None:
    """Tag a cached DataFrame with the SHA-256 of the bytes it came from: every reader's deep
    copy carries it, so the runtime can remember its encoding (`datasites.runtime.cache`)."""
    import pandas as pd

    if type(value) is pd.DataFrame:
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        value.attrs[FRAME_DIGEST_ATTR] = hashlib.sha256(data).hexdigest()


def _fresh(value: Any) -> Any:
    """A new container around the shared read-only arrays, so adding keys stays local; a
    DataFrame's own deep copy, so that no reader can change what the next one reads."""
    import pandas as pd

    if type(value) is pd.DataFrame:
        return value.copy(deep=True)
    return dict(value) if isinstance(value, dict) else value


def cache_blob_reads(cache: BlobCache | None = None) -> BlobCache:
    """Deserialize each large immutable blob once per datasite process, not on every read.

    A study call reads its assets from the blob store twice (syft checks the argument for
    nested objects, then unwraps it), and each read deserializes the whole asset again:
    for a 20,000-tile PathMNIST asset about a third of the datasite's CPU per call, more
    than the DP-SGD steps of a short round. Returns the cache in use (one per process).
    """
    from syft.store.blob_storage import SyftObjectRetrieval

    current = getattr(SyftObjectRetrieval._read_data, "blob_cache", None)
    if current is not None:
        return current
    cache = cache or BlobCache()
    original = SyftObjectRetrieval._read_data

    def read_data(self: Any, stream: bool = False, _deserialize: bool = True, **kw: Any) -> Any:
        if not _deserialize:
            return original(self, stream=stream, _deserialize=False, **kw)
        value = cache.load(self.syft_object, lambda raw: original(self, _deserialize=True))
        return [value] if stream else value

    read_data.blob_cache = cache  # type: ignore[attr-defined]
    SyftObjectRetrieval._read_data = read_data
    return cache


def cache_json_bytes(cache: BlobCache | None = None) -> BlobCache:
    """Deserialize each large immutable value of syft's store once, not on every read.

    syft keeps an object's data inline in its SQLite row, as base64 text, when it is below
    the blob store's size (an asset's mock, a small test split). A study call reads each
    asset's row three times (argument unwrapping, the input policy's check, then its
    filter), and every read decoded and deserialized that text again: at the small scale
    about a third of syft's own CPU per call, paid by every call, twice a round in a secure
    study. The cache keeps only arrays and dicts of arrays (`BlobCache`), matched on the
    exact text, so the study's reply, the scientist's arguments and every other row
    deserialize as before. Returns the cache in use (one per process).
    """
    from syft.serde import json_serde

    current = getattr(json_serde._deserialize_from_json_bytes, "blob_cache", None)
    if current is not None:
        return current
    cache = cache or BlobCache(DEFAULT_JSON_CACHE_CHARS, min_bytes=_JSON_CACHE_MIN_CHARS)
    original = json_serde._deserialize_from_json_bytes

    def deserialize(obj: str) -> Any:
        return cache.load(obj, original) if isinstance(obj, str) else original(obj)

    deserialize.blob_cache = cache  # type: ignore[attr-defined]
    # deserialize_json calls it through its module's global name.
    json_serde._deserialize_from_json_bytes = deserialize
    return cache


def count_outputs_in_sql() -> None:
    """Count a study's past executions with one SQL COUNT instead of reading them all back.

    Before each call syft checks the code's output policy (`OutputPolicyExecuteCount`:
    fewer executions than its limit) by loading and deserializing every `ExecutionOutput`
    the code ever produced, only to take `len` of the list. A study stores one per call, so
    the check grew with each round: with a hundred outputs it and the history read below
    (`read_output_history_lazily`) took a third of a call's CPU, and a 200-round secure
    study makes 400. The count is the same rows syft's query would
    return (the server's own credentials see every row), counted by SQLite.
    """
    from syft.service.policy.policy import OutputPolicyExecuteCount

    original = OutputPolicyExecuteCount.count
    if getattr(original, "in_sql", False):
        return

    def count(self: Any, context: Any = None) -> int:
        if context is None:  # the client's side: syft's own path
            return original(self, context)
        return _count_outputs(context.server.services.output.stash, self.id)

    count.in_sql = True  # type: ignore[attr-defined]
    OutputPolicyExecuteCount.count = count


def _count_outputs(stash: Any, policy_id: Any) -> int:
    import sqlalchemy as sa

    where = stash._get_field_filter("output_policy_id", policy_id)
    query = sa.select(sa.func.count()).select_from(stash.table).where(where)
    with stash.sessionmaker() as session:
        return int(session.execute(query).scalar_one())


class _LazyHistory(Sequence):
    """A code's output history, read from the store only if someone looks at it."""

    def __init__(self, load: Callable[[], list]) -> None:
        self._load, self._items = load, None

    def _all(self) -> list:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]


def read_output_history_lazily() -> None:
    """Read a code's output history only when a call is refused and syft looks at it.

    syft's call reads the whole history (every `ExecutionOutput` of the code, deserialized)
    before it checks the output policy, but uses it only on the refused path, to return the
    last output again. Every allowed call paid for a list it never read, growing by one or
    two entries a round (see `count_outputs_in_sql`). The history is now a sequence that
    loads on first use: the refused path reads exactly what it read before.
    """
    from syft.service.code.user_code import UserCode
    from syft.types.errors import SyftException
    from syft.types.result import as_result

    original = UserCode.get_output_history
    if getattr(original, "lazy", False):
        return

    @as_result(SyftException)
    def get_output_history(self: Any, context: Any) -> _LazyHistory:
        return _LazyHistory(lambda: original(self, context=context).unwrap())

    get_output_history.lazy = True  # type: ignore[attr-defined]
    UserCode.get_output_history = get_output_history


def _shape_only(array: np.ndarray) -> str:
    return f"array(shape={array.shape}, dtype={array.dtype})"


def summarize_array_reprs() -> None:
    """Make every array's repr and str in the datasite process its shape and dtype only.

    syft formats the data of each `ActionObject` whenever one is built, including every read
    from its store (`ActionObject.__check_action_data` computes `repr` and `str` of the data,
    then keeps 100 characters), and formats each API call for a log line that is not
    written. A study's weights are a dict of arrays each below numpy's 1,000-element
    summary threshold, so every value was printed in full, several times per call: about a
    sixth of a datasite's CPU per study call (benchmarks/README.md, secure_aggregation);
    numpy's summarized format still cost half of that. Nothing in the datasite shows an
    array to a person, and a repr that carries no values cannot leak private ones into a
    log line or an error message either.
    """
    if hasattr(np, "set_string_function"):  # numpy 1.x (pinned); removed in numpy 2
        np.set_string_function(_shape_only, repr=True)
        np.set_string_function(_shape_only, repr=False)
    else:  # pragma: no cover - numpy 2: formatting still happens, but summarized
        np.set_printoptions(threshold=16, edgeitems=1)


def _frame_shape_only(frame: Any) -> str:
    return f"{type(frame).__name__}(shape={frame.shape})"


def summarize_frame_reprs() -> None:
    """Make every DataFrame's and Series' repr and str in the datasite process its shape.

    The same validator as above formats the EHR assets (DataFrames) each time the store
    reads one, twice (`repr`, then `str`), and a call reads each of its assets several
    times: pandas fitting 59 columns to a terminal that a server does not have took 37 ms a
    format, about a third of a datasite's CPU in a study's EHR call (py-spy over 3-round
    studies on three local datasites). As for arrays, nothing in the datasite shows a frame
    to a person, and a repr without values leaks none.
    """
    import pandas as pd

    for kind in (pd.DataFrame, pd.Series):
        kind.__repr__ = _frame_shape_only  # type: ignore[method-assign]
        kind.__str__ = _frame_shape_only  # type: ignore[method-assign]


def serialize_signatures_once(max_entries: int = _SIGNATURE_CACHE_ENTRIES) -> None:
    """Serialize each function signature object once, not at every API fetch.

    A client's login, and its first look-up of a new study function, fetch the whole API
    from the datasite; syft builds it in milliseconds but serializes every endpoint's
    `inspect.Signature` (hundreds of service and library endpoints, the same objects each
    time) from scratch: 1.2 s of the datasite's CPU per fetch, 62% of it these signatures
    (py-spy over eight fetches). A signature is immutable, so its bytes are kept by object
    identity, each next to the object itself (an id is never reused while it is kept);
    signatures built per request (a user's code) just pass through a bounded table.
    """
    from syft.types.syft_object_registry import SyftObjectRegistry

    name, version = "inspect_Signature", 1
    properties = list(SyftObjectRegistry.get_serde_properties(name, version))
    original = properties[1]
    if getattr(original, "memoized", False):
        return
    kept: dict[int, tuple[Any, bytes]] = {}
    lock = threading.Lock()

    def serialize(signature: Any) -> bytes:
        hit = kept.get(id(signature))
        if hit is not None and hit[0] is signature:
            return hit[1]
        blob = original(signature)
        with lock:
            if len(kept) >= max_entries:
                kept.clear()
            kept[id(signature)] = (signature, blob)
        return blob

    serialize.memoized = True  # type: ignore[attr-defined]
    properties[1] = serialize
    SyftObjectRegistry.register_cls(name, version, tuple(properties))


# The roles already looked up during the API call being handled (None outside a call).
_CALL_ROLES: ContextVar[dict[str, Any] | None] = ContextVar("datasites_call_roles", default=None)


def remember_roles_per_call() -> None:
    """Look a caller's role up once per API call, not at every permission check.

    syft asks `ObjectStash.get_role` for the caller's role at each store access, and each
    answer reads and decodes the caller's whole User row: 10% of a datasite's CPU in a
    secure study's short calls. Within one call a scientist's or a guest's role cannot
    change (neither may edit roles here), so their roles are kept for the call's duration
    only; an operator's role is looked up every time.
    """
    from syft.server.server import Server
    from syft.service.user.user_roles import ServiceRole
    from syft.store.db.stash import ObjectStash

    if getattr(ObjectStash.get_role, "per_call", False):
        return
    original_role = ObjectStash.get_role
    original_call = Server.handle_api_call

    def get_role(self: Any, credentials: Any, session: Any = None) -> Any:
        memo = _CALL_ROLES.get()
        if memo is None:
            return original_role(self, credentials, session=session)
        key = str(credentials)
        if key not in memo:
            role = original_role(self, credentials, session=session)
            if role.value >= ServiceRole.DATA_OWNER.value:
                return role
            memo[key] = role
        return memo[key]

    def handle_api_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _CALL_ROLES.set({})
        try:
            return original_call(self, *args, **kwargs)
        finally:
            _CALL_ROLES.reset(token)

    get_role.per_call = True  # type: ignore[attr-defined]
    ObjectStash.get_role = get_role
    Server.handle_api_call = handle_api_call


# -- what a caller's message may decode to ----------------------------------------------------


class DecodeLimit(ValueError):
    """A message would decode to more bytes than its caller may send; `size` is at least
    what it would have taken."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the message decodes to more than {limit} bytes")
        self.size, self.limit = int(size), int(limit)


class DecodeRefused(ValueError):
    """A message holds something its caller may not send at all (`reason` says what)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeBudget:
    """Bytes the arrays and tables of one message may take once decoded; `charged` counts
    what they took."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.charged = 0

    def charge(self, size: int) -> None:
        size = max(0, int(size))
        if self.charged + size > self.limit:
            raise DecodeLimit(self.charged + size, self.limit)
        self.charged += size


_DECODE_BUDGET: ContextVar[DecodeBudget | None] = ContextVar("datasites_decode", default=None)


@contextlib.contextmanager
def decode_budget(limit: int) -> Iterator[DecodeBudget]:
    """Within the block, each array or table syft decodes is charged to one budget before
    its memory is taken (`bound_decoding`); past it, `DecodeLimit` is raised."""
    budget = DecodeBudget(limit)
    token = _DECODE_BUDGET.set(budget)
    try:
        yield budget
    finally:
        _DECODE_BUDGET.reset(token)


def _object_itemsize(dtype: np.dtype) -> int:
    """Bytes one element takes once decoded (a Python object per element for `object`)."""
    return max(int(dtype.itemsize), 32 if dtype.kind == "O" else 1)


def bound_decoding() -> None:
    """Charge what an array or a DataFrame decodes to before syft allocates it.

    syft sends a numpy array (and a torch tensor, and a string array) as an Arrow tensor
    compressed with zstd, with its decompressed size and dtype beside it, and a DataFrame
    as Parquet: a 200 MiB array of zeros travels as about 2 MB, and a body limit or a quota
    that counts the bytes sent let a scientist store it whole (the datasite's memory grew by
    600 MB). Inside `decode_budget`, the decompressed size is charged before decompressing,
    and the tensor's element count times the wider of its two itemsizes (a tensor's shape
    and dtype need not match its buffer), where it is more, before the copy to the dtype it
    names; so an array is charged its `nbytes` (or its buffer, if larger), a string array's
    count times its longest string before it is built, and a Parquet table what it decodes
    to before it is read (`_frame_charge`: flat numeric columns only; a list column of one
    cell holding 50M zeros was 3 KB of Parquet and 400 MB decoded, charged 13 KB). Outside a
    budget nothing changes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from syft.serde import arrow
    from syft.types.syft_object_registry import SyftObjectRegistry

    if getattr(arrow.arrow_deserialize, "bounded", False):
        return
    original_arrow = arrow.arrow_deserialize
    original_utf8 = arrow.numpyutf8toarray

    def arrow_deserialize(numpy_bytes: bytes, decompressed_size: int, dtype: str) -> np.ndarray:
        budget = _DECODE_BUDGET.get()
        if budget is None:
            return original_arrow(numpy_bytes, decompressed_size, dtype)
        if not isinstance(decompressed_size, int) or decompressed_size < 0:
            raise ValueError("an array's decompressed size is not a whole number of bytes")
        budget.charge(decompressed_size)
        target = np.dtype(dtype)
        if arrow.flags.APACHE_ARROW_COMPRESSION is arrow.ApacheArrowCompression.NONE:
            buffer = pa.BufferReader(numpy_bytes).read_buffer()
        else:
            codec = arrow.flags.APACHE_ARROW_COMPRESSION.value
            buffer = pa.decompress(numpy_bytes, decompressed_size=decompressed_size, codec=codec)
        tensor = pa.ipc.read_tensor(buffer)
        width = max(tensor.type.bit_width // 8, _object_itemsize(target))
        budget.charge(int(tensor.size) * width - decompressed_size)  # what exceeds it
        array = tensor.to_numpy()
        array.setflags(write=True)
        return array.astype(target)

    def numpyutf8toarray(input_index: np.ndarray) -> np.ndarray:
        budget = _DECODE_BUDGET.get()
        if budget is not None:
            shape_length = int(input_index[-1])
            string_index = input_index[: -(shape_length + 1)]
            index_length = int(string_index[-1])
            offsets = np.asarray(string_index[-(index_length + 1) : -1], dtype=np.int64)
            longest = int(np.diff(offsets, prepend=0).max()) if offsets.size else 0
            budget.charge(offsets.size * max(longest, 1) * 4)  # numpy's UCS-4 strings
        return original_utf8(input_index)

    arrow_deserialize.bounded = True  # type: ignore[attr-defined]
    # numpy_deserialize (what syft registered) finds both through the module's globals.
    arrow.arrow_deserialize = arrow_deserialize
    arrow.numpyutf8toarray = numpyutf8toarray

    versions = SyftObjectRegistry.__object_serialization_registry__.get("pandas_dataframe", {})
    for version, properties in list(versions.items()):
        original_frame = properties[2]

        def deserialize_frame(blob: bytes, _original: Callable = original_frame) -> Any:
            budget = _DECODE_BUDGET.get()
            if budget is not None:
                budget.charge(_frame_charge(pq.ParquetFile(pa.BufferReader(blob))))
            return _original(blob)

        versions[version] = (*properties[:2], deserialize_frame, *properties[3:])


# A caller's tables hold numbers only: each value decodes to at most 8 bytes of numpy.
_FRAME_VALUE_BYTES = 8
# pandas' own objects per column (its block, its index entry), per column chunk read.
_FRAME_COLUMN_BYTES = 1024
# Codecs whose output is at most a few dozen times their input (snappy's bound is about
# 32x); zstd, gzip, brotli or lz4 pages can hold a thousandfold in a page whose header
# names any size, which the file's metadata need not show.
_FRAME_CODECS = frozenset({"UNCOMPRESSED", "SNAPPY"})


def _frame_charge(parquet: Any) -> int:
    """Bytes a caller's Parquet table decodes to, from its metadata, before any of it is
    read; `DecodeRefused` for a table that is not flat numbers.

    A cell of a list (or struct, map, string, binary, dictionary, object) column decodes
    to as much as its values say, and a run-length or dictionary encoding keeps any
    number of them in a few bytes: a scientist sends no tables (assets are the operator's,
    and the operator's calls are not bounded here), so only flat integer, float, boolean,
    timestamp and duration columns are taken, each value 8 bytes at most once decoded.
    Each column chunk is charged the larger of its values times 8 and its declared
    uncompressed size, plus pandas' own objects per column."""
    import pyarrow as pa

    for field in parquet.schema_arrow:
        kind = field.type
        flat = (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_timestamp(kind)
            or pa.types.is_duration(kind)
        )
        if not flat:
            raise DecodeRefused(
                f"a table's column {str(field.name)[:40]!r} holds {str(kind)[:40]}; tables "
                "sent here hold numbers only"
            )
    meta = parquet.metadata
    total = meta.num_columns * _FRAME_COLUMN_BYTES
    for group_index in range(meta.num_row_groups):
        group = meta.row_group(group_index)
        for column_index in range(group.num_columns):
            chunk = group.column(column_index)
            if chunk.compression not in _FRAME_CODECS:
                raise DecodeRefused(
                    f"a table's pages are compressed with {str(chunk.compression)[:20]}; "
                    "send them uncompressed or with snappy"
                )
            values = max(int(chunk.num_values), int(group.num_rows))
            decoded = values * _FRAME_VALUE_BYTES
            total += max(decoded, int(chunk.total_uncompressed_size)) + _FRAME_COLUMN_BYTES
    return total


def apply_all() -> None:
    """Every fix, in the order the datasite needs them (before its tables exist)."""
    store_uuids_as_text()
    skip_walking_bytes()
    cache_blob_reads()
    cache_json_bytes()
    count_outputs_in_sql()
    read_output_history_lazily()
    summarize_array_reprs()
    summarize_frame_reprs()
    serialize_signatures_once()
    remember_roles_per_call()
    bound_decoding()
