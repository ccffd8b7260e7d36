"""The datasite's fixes to syft: storage ids, blob reads and what they cost."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from syft.store.db.schema import UIDTypeDecorator
from syft.types.uid import UID

from datasites.server.syft_fixes import skip_walking_bytes, store_uuids_as_text

# All digits but the uuid4 version and variant nibbles: SQLite's NUMERIC affinity would
# store its hex as 6.77e+31.
NUMERIC_LOOKING = "67787761947041568000000000000016"


def test_numeric_looking_uid_round_trips_through_sqlite(tmp_path: Path) -> None:
    store_uuids_as_text()
    assert sa.Column("id", UIDTypeDecorator).type.compile(dialect=sqlite.dialect()) == "CHAR(32)"
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ids.db'}")
    table = sa.Table("objects", sa.MetaData(), sa.Column("id", UIDTypeDecorator, primary_key=True))
    table.metadata.create_all(engine)
    uid = UID(NUMERIC_LOOKING)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=uid))
    with engine.connect() as conn:
        stored_type = conn.execute(sa.text("SELECT typeof(id) FROM objects")).scalar_one()
        read_back = conn.execute(sa.select(table.c.id)).scalar_one()
    assert stored_type == "text"
    assert read_back == uid


class _Unwalkable(bytes):
    """A serialized blob that fails the test if anything iterates over its bytes."""

    def __iter__(self):  # type: ignore[override]
        raise AssertionError("syft walked a blob byte by byte")


def test_service_results_are_stamped_without_walking_blob_bytes() -> None:
    from syft.service import service
    from syft.store.blob_storage import SyftObjectRetrieval
    from syft.types.uid import UID

    skip_walking_bytes()
    skip_walking_bytes()  # idempotent: a second call must not wrap the wrapper
    retrieval = SyftObjectRetrieval(syft_object=_Unwalkable(b"\x00" * 64), file_name="train")
    server_id = UID()
    service.attach_attribute_to_syft_object(
        result={"blob": retrieval, "raw": _Unwalkable(b"x")},
        attr_dict={"syft_server_location": server_id},
    )
    # The syft object inside the result is still stamped, as syft intends.
    assert retrieval.syft_server_location == server_id


def test_blob_cache_serves_identical_bytes_only_and_freezes_what_it_keeps() -> None:
    import numpy as np
    import pandas as pd

    from datasites.server.syft_fixes import BlobCache

    calls = []

    def deserialize(raw: bytes) -> object:
        calls.append(raw)
        return {"images": np.frombuffer(raw, dtype=np.uint8).copy(), "marked": True}

    cache = BlobCache(max_bytes=3 << 20)
    blob = bytes(range(256)) * 8192  # 2 MiB
    first = cache.load(blob, deserialize)
    second = cache.load(bytes(blob), deserialize)  # equal bytes, another object
    assert len(calls) == 1 and cache.hits == 1
    assert second is not first and second["images"] is first["images"]
    assert not first["images"].flags.writeable
    second["extra"] = 1  # each caller gets its own dict
    assert "extra" not in cache.load(blob, deserialize)
    # Same length and same first 4 KiB but other bytes: never the cached value.
    other = blob[:-1] + b"\x01"
    assert cache.load(other, deserialize)["images"][-1] == 1 and len(calls) == 2
    # The 3 MiB budget holds one 2 MiB blob: the older one was evicted.
    cache.load(blob, deserialize)
    assert len(calls) == 3
    # A DataFrame (an EHR asset) is kept, and every reader gets its own deep copy: changing
    # one changes neither the cache nor the next read.
    frames = []
    table = cache.load(other, lambda raw: frames.append(1) or pd.DataFrame({"a": [1, 2]}))
    table.loc[0, "a"] = 99
    again = cache.load(other, lambda raw: frames.append(1) or pd.DataFrame({"a": [1, 2]}))
    assert len(frames) == 1 and again is not table and again["a"].tolist() == [1, 2]
    # Each copy carries the digest of the bytes it came from (the runtime's encoding memo).
    from datasites.runtime.cache import FRAME_DIGEST_ATTR

    assert again.attrs[FRAME_DIGEST_ATTR] == hashlib.sha256(other).hexdigest()
    # Anything else (a list) is neither kept nor frozen.
    lists, third = [], blob[:-1] + b"\x02"
    cache.load(third, lambda raw: lists.append(1) or [1])
    cache.load(third, lambda raw: lists.append(1) or [1])
    assert len(lists) == 2


def test_syft_blob_reads_go_through_the_cache() -> None:
    import numpy as np
    from syft.serde.serialize import _serialize
    from syft.store.blob_storage import SyftObjectRetrieval

    from datasites.server.syft_fixes import cache_blob_reads

    cache = cache_blob_reads()
    assert cache_blob_reads() is cache  # one cache per process, however often applied
    # Random, so that syft's compression cannot shrink it below the cache's 1 MiB floor.
    pixels = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)
    asset = {"images": pixels, "labels": np.zeros(4, np.uint8)}
    raw = _serialize(asset, to_bytes=True)
    hits = cache.hits
    reads = [SyftObjectRetrieval(syft_object=raw, file_name="train").read() for _ in range(2)]
    assert cache.hits == hits + 1
    assert np.array_equal(reads[1]["images"], asset["images"])
    assert reads[1]["images"] is reads[0]["images"] and not reads[0]["images"].flags.writeable
    assert SyftObjectRetrieval(syft_object=raw, file_name="train").read(_deserialize=False) == raw


def test_store_rows_holding_arrays_deserialize_once() -> None:
    """An asset's inline data (its mock, a small test split) is decoded once per process;
    a study's reply or argument, a dict that holds more than arrays, is decoded every time."""
    from typing import Any

    import numpy as np
    from syft.serde.json_serde import _serialize_to_json_bytes, deserialize_json

    from datasites.server.syft_fixes import cache_json_bytes

    cache = cache_json_bytes()
    assert cache_json_bytes() is cache
    pixels = np.random.default_rng(1).integers(0, 256, 1 << 19, dtype=np.uint8)
    text = _serialize_to_json_bytes({"images": pixels, "labels": np.zeros(4, np.uint8)})
    hits = cache.hits
    reads = [deserialize_json(text, Any) for _ in range(2)]
    assert cache.hits == hits + 1
    assert np.array_equal(reads[1]["images"], pixels) and reads[1] is not reads[0]
    assert reads[1]["images"] is reads[0]["images"] and not reads[0]["images"].flags.writeable
    reply = _serialize_to_json_bytes({"hospital": "a", "batch": [{"masked": pixels.tobytes()}]})
    replies = [deserialize_json(reply, Any) for _ in range(2)]
    assert cache.hits == hits + 1 and replies[0]["batch"] is not replies[1]["batch"]
    small = _serialize_to_json_bytes({"images": pixels[:1000]})
    assert deserialize_json(small, Any)["images"].flags.writeable  # below the floor: as before


def test_output_counts_match_syft_and_the_history_loads_only_when_read(tmp_path: Path) -> None:
    """The output policy's count is SQLite's COUNT of exactly the rows syft's own query
    returns; the call's output history is read from the store only if something reads it."""
    from types import SimpleNamespace

    from syft.server.credentials import SyftSigningKey
    from syft.service.code.user_code import UserCode
    from syft.service.output.output_service import ExecutionOutput, OutputStash
    from syft.service.policy.policy import OutputPolicyExecuteCount
    from syft.store.db.sqlite import SQLiteDBConfig, SQLiteDBManager

    from datasites.server.syft_fixes import count_outputs_in_sql, read_output_history_lazily

    count_outputs_in_sql()
    read_output_history_lazily()
    key = SyftSigningKey.generate()
    db = SQLiteDBManager(
        config=SQLiteDBConfig(path=tmp_path, filename="outputs.db"),
        server_uid=UID(),
        root_verify_key=key.verify_key,
    )
    stash = OutputStash(store=db)
    db.init_tables()
    policy, other = OutputPolicyExecuteCount(limit=9), OutputPolicyExecuteCount(limit=9)
    for owner in [policy] * 3 + [other]:
        output = ExecutionOutput.from_ids(
            output_ids=[UID()],
            user_code_id=UID(),
            executing_user_verify_key=key.verify_key,
            server_uid=db.server_uid,
            output_policy_id=owner.id,
            input_ids={},
        )
        stash.set(key.verify_key, output).unwrap()
    reads: list[UID] = []

    def history(context: object, user_code_id: UID) -> list[int]:
        reads.append(user_code_id)
        return [1, 2]

    output = SimpleNamespace(stash=stash, get_by_user_code_id=history)
    context = SimpleNamespace(server=SimpleNamespace(services=SimpleNamespace(output=output)))

    for owner, expected in ((policy, 3), (other, 1), (OutputPolicyExecuteCount(limit=9), 0)):
        assert len(stash.get_by_output_policy_id(key.verify_key, owner.id).unwrap()) == expected
        assert owner.count(context) == expected
    code = SimpleNamespace(id=UID())
    lazy = UserCode.get_output_history(code, context=context).unwrap()
    assert reads == []  # nothing read yet
    assert len(lazy) == 2 and lazy[-1] == 2 and reads == [code.id]
    assert len(lazy) == 2 and reads == [code.id]  # read once


def test_the_datasite_never_formats_an_arrays_values() -> None:
    """syft formats the data of every ActionObject it builds; weights must not be printed at
    each store read, and no repr in the datasite may carry values (`summarize_array_reprs`)."""
    import numpy as np
    from syft.service.action.action_object import ActionObject

    from datasites.server.syft_fixes import summarize_array_reprs

    weights = {"conv.weight": np.linspace(0, 1, 900, dtype=np.float32).reshape(100, 9)}
    try:
        assert len(repr(weights)) > 2000  # numpy's default: all 900 values
        summarize_array_reprs()
        assert repr(weights) == "{'conv.weight': array(shape=(100, 9), dtype=float32)}"
        assert str(np.array([0.123456])) == "array(shape=(1,), dtype=float64)"
        stored = ActionObject.from_obj(weights)
        assert "0.1" not in stored.syft_action_data_repr_ + stored.syft_action_data_str_
        assert np.array_equal(stored.syft_action_data["conv.weight"], weights["conv.weight"])
    finally:
        np.set_string_function(None, repr=True)
        np.set_string_function(None, repr=False)


def test_the_datasite_never_formats_a_frames_values() -> None:
    """The EHR assets are DataFrames: each store read formatted one twice, and a repr with
    values could carry a patient's into a log line (`summarize_frame_reprs`)."""
    import pandas as pd
    from syft.service.action.action_object import ActionObject

    from datasites.server.syft_fixes import summarize_frame_reprs

    frame = pd.DataFrame({"age": [71.25, 33.5], "race": ["Caucasian", "Asian"]})
    saved = {kind: (kind.__repr__, kind.__str__) for kind in (pd.DataFrame, pd.Series)}
    try:
        assert "Caucasian" in repr(frame)  # pandas' default: the values
        summarize_frame_reprs()
        assert repr(frame) == str(frame) == "DataFrame(shape=(2, 2))"
        assert repr(frame["age"]) == "Series(shape=(2,))"
        stored = ActionObject.from_obj(frame)
        shown = stored.syft_action_data_repr_ + stored.syft_action_data_str_
        assert "71.25" not in shown and "Caucasian" not in shown
        pd.testing.assert_frame_equal(stored.syft_action_data, frame)
    finally:
        for kind, (rep, text) in saved.items():
            kind.__repr__, kind.__str__ = rep, text
