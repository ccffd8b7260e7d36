"""Workarounds for syft 0.9.5 defects, applied inside the hospital's datasite process.

Each fix is a narrow, idempotent patch with the defect it answers written next to it, so it
can be dropped the day syft fixes the cause. They run before the `Datasite` is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_BYTES_LIKE = (bytes, bytearray, memoryview, str)


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
    For a 20,000-tile PathMNIST asset (47 MB, read twice per study call) that was about a
    minute of CPU per call, against 0.3 s to deserialize it. A string or a byte buffer can
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


def apply_all() -> None:
    """Every fix, in the order the datasite needs them (before its tables exist)."""
    store_uuids_as_text()
    skip_walking_bytes()
