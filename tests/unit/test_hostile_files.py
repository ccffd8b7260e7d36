"""Hostile files a hospital or a scientist may be handed (issue 27, second attack).

A FIFO named like an invitation hung `read_invitation` forever; a 20-byte tampered pickled
row (`bytearray(10**11)`) had the legacy reader zero-fill 100 GB.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datasites.contract.files import JsonFileError, read_bounded_json, write_json
from datasites.contract.invitation import InvitationError, read_invitation
from datasites.contract.stored import StoredFormatError, legacy_loads


def _finishes(call: Any, seconds: float = 5.0) -> Any:
    """What `call()` returned or raised, or a failure if it is still blocked after
    `seconds` (the thread is a daemon: a hung read does not hang the suite)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("returned", call()))
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome.append(("raised", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        pytest.fail(f"still blocked after {seconds} s")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_named_as_an_invitation_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "hospital-a.invite.json"
    os.mkfifo(fifo)

    kind, error = _finishes(lambda: read_invitation(fifo))

    assert kind == "raised" and isinstance(error, InvitationError), error
    assert "not a regular file" in str(error) and len(str(error).splitlines()) == 1
    kind, error = _finishes(lambda: read_bounded_json(fifo))
    assert kind == "raised" and isinstance(error, JsonFileError), error


def test_a_directory_or_device_is_not_read_as_json(tmp_path: Path) -> None:
    with pytest.raises(JsonFileError, match="not a regular file"):
        read_bounded_json(Path("/dev/zero"))
    with pytest.raises((JsonFileError, IsADirectoryError)):
        read_bounded_json(tmp_path)


def test_a_regular_json_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json(path, {"a": [1, 2]})
    assert read_bounded_json(path) == {"a": [1, 2]}


class _Call:
    """Pickles as `function(*args)`: what a tampered row can say."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> Any:
        return self.function, self.args


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as found
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as found
    return found


@pytest.mark.parametrize(
    "row",
    [
        # sizes a machine can allocate, so the reader is seen to refuse (10**11 would
        # fail on its own, with a MemoryError after trying)
        _Call(bytearray, 10**8),
        _Call(np.ndarray, (10**7,)),
        _Call(_reconstruct(), np.ndarray, (10**7,), b"b"),
    ],
    ids=["bytearray", "ndarray", "reconstruct"],
)
def test_a_pickled_row_that_allocates_from_a_number_is_refused_in_one_sentence(row: Any) -> None:
    raw = pickle.dumps(row, protocol=4)
    assert len(raw) < 100

    with pytest.raises(StoredFormatError) as refused:
        legacy_loads(raw)

    assert len(str(refused.value).splitlines()) == 1


def test_legacy_rows_of_arrays_and_containers_still_read() -> None:
    value = {
        "weights": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.ones((3, 2))),
        "empty": np.zeros((0, 4)),
        "flag": np.array([True, False]),
        "eps": np.float64(0.5),
        "nested": (1, [2, {3}], frozenset({4}), complex(1, 2)),
        "raw": b"xy",
    }
    for protocol in (3, 4):
        read = legacy_loads(pickle.dumps(value, protocol=protocol))
        assert read.keys() == value.keys()
        for name in ("weights", "fortran", "empty", "flag"):
            assert read[name].dtype == value[name].dtype
            assert np.array_equal(read[name], value[name])
        assert read["eps"] == 0.5 and read["nested"] == value["nested"] and read["raw"] == b"xy"
