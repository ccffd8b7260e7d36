"""The datasite's storage survives ids that SQLite would otherwise read as numbers."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from syft.store.db.schema import UIDTypeDecorator
from syft.types.uid import UID

from datasites.syft_fixes import skip_walking_bytes, store_uuids_as_text

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
