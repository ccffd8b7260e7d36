"""The runtime's memory of encoded assets it has already seen, across study calls.

Every call of a study re-encodes the hospital's training asset, which for PathMNIST costs
as much CPU as several DP-SGD steps (benchmarks/README.md, "Short rounds became
affordable"). The datasite's blob cache
(`datasites.server.syft_fixes.cache_blob_reads`) hands every call the same read-only arrays, and an
array nobody can write cannot change: the identity of the inputs is then proof enough that
their encoding is the one remembered. Writable inputs are encoded every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

Encoded = tuple[np.ndarray, np.ndarray]
# The attribute under which the datasite's blob cache tags each DataFrame it hands out with
# the SHA-256 of the stored bytes it was read from (`datasites.server.syft_fixes`).
FRAME_DIGEST_ATTR = "datasites_blob_sha256"


class EncodedMemo:
    """The last `size` encodings of read-only (images, labels) pairs, by identity."""

    def __init__(self, encode: Callable[[np.ndarray, np.ndarray], Encoded], size: int = 4) -> None:
        self._encode = encode
        self._size = size
        # Keyed by the inputs' ids; each entry holds the inputs themselves, so an id cannot
        # be reused by another array while its entry lives.
        self._entries: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, Encoded]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Encoded:
        if not (_frozen(images) and _frozen(labels)):
            return self._encode(images, labels)
        key = (id(images), id(labels))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is images and entry[1] is labels:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[2]
        encoded = self._encode(images, labels)
        for array in encoded:
            array.flags.writeable = False
        with self._lock:
            self._entries[key] = (images, labels, encoded)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return encoded


def _frozen(array: object) -> bool:
    """A numpy array that owns or views memory nobody can write through it."""
    return isinstance(array, np.ndarray) and not array.flags.writeable and _base_frozen(array)


def _base_frozen(array: np.ndarray) -> bool:
    base = array.base
    return not isinstance(base, np.ndarray) or not base.flags.writeable


class FrameMemo:
    """The last `size` encodings of EHR tables the datasite read from its store, by the
    digest of their stored bytes and the label.

    Each read of a cached table is a fresh deep copy (a DataFrame cannot be made read-only),
    so identity proves nothing; the digest the datasite's cache attached does. Encoding a
    12,000-encounter table costs about half a second, more than a round of the EHR recipe's
    DP-SGD. A table without the tag (not from the store) is encoded every time.
    """

    def __init__(self, encode: Callable[..., Encoded], size: int = 4) -> None:
        self._encode = encode
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Encoded] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def __call__(self, frame: object, label: str) -> Encoded:
        attrs = getattr(frame, "attrs", None)
        digest = attrs.get(FRAME_DIGEST_ATTR) if isinstance(attrs, dict) else None
        if not isinstance(digest, str):
            return self._encode(frame, label)
        key = (digest, label)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        encoded = self._encode(frame, label)
        for array in encoded:
            array.flags.writeable = False
        with self._lock:
            self._entries[key] = encoded
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return encoded
