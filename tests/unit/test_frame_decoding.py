"""What a caller's table decodes to is charged before it is read (issue 27, second attack):
a DataFrame of one cell holding a list of 50M zeros was 3 KB of Parquet, was charged 13 KB
against the quota, and decoded to 400 MB in the datasite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasites.server.syft_fixes import DecodeLimit, DecodeRefused, bound_decoding, decode_budget

MB = 2**20


@pytest.fixture(autouse=True)
def bounded() -> None:
    bound_decoding()


def decode(blob: bytes, limit: int = 64 * MB) -> tuple[object, int]:
    import syft as sy

    with decode_budget(limit) as budget:
        value = sy.deserialize(blob, from_bytes=True)
    return value, budget.charged


def test_a_list_cell_of_zeros_is_refused_before_it_is_decoded() -> None:
    import syft as sy

    frame = pd.DataFrame({"a": [np.zeros(5_000_000)]})  # 40 MB once decoded
    for blob in (
        sy.serialize(frame, to_bytes=True),
        sy.serialize(sy.ActionObject.from_obj(frame), to_bytes=True),
    ):
        assert len(blob) < 100_000
        with pytest.raises((DecodeRefused, DecodeLimit)) as refused:
            decode(blob, limit=4 * MB)
        assert "numbers only" in str(refused.value) or refused.value.size >= 40 * MB  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "column",
    [["x" * 100] * 1000, [{"k": 1}] * 10, pd.Categorical(["a", "b"] * 500)],
    ids=["strings", "structs", "categorical"],
)
def test_a_column_that_is_not_numbers_is_refused_in_one_sentence(column: object) -> None:
    import syft as sy

    blob = sy.serialize(pd.DataFrame({"c": column}), to_bytes=True)
    with pytest.raises(DecodeRefused) as refused:
        decode(blob)
    assert "numbers only" in refused.value.reason and len(refused.value.reason.splitlines()) == 1


def test_pages_of_a_codec_without_a_small_bound_are_refused() -> None:
    from syft.types.syft_object_registry import SyftObjectRegistry

    table = pa.Table.from_pandas(pd.DataFrame({"a": np.zeros(1000)}))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    deserialize = SyftObjectRegistry.__object_serialization_registry__["pandas_dataframe"][1][2]
    with decode_budget(64 * MB), pytest.raises(DecodeRefused, match="snappy"):
        deserialize(sink.getvalue().to_pybytes())


def test_a_table_of_numbers_decodes_charged_at_least_its_values() -> None:
    import syft as sy

    frame = pd.DataFrame(
        {
            "age": np.arange(20_000, dtype=np.int64),
            "w": np.random.default_rng(0).random(20_000),
            "flag": np.ones(20_000, dtype=bool),
            "at": pd.date_range("2020-01-01", periods=20_000, freq="min"),
        }
    )
    value, charged = decode(sy.serialize(frame, to_bytes=True))

    pd.testing.assert_frame_equal(value, frame, check_freq=False, check_dtype=False)
    assert charged >= 20_000 * 4 * 8
