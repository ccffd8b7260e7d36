"""Files one side writes and the other reads, and how any file is written safely.

`launch.py` writes them into the data dir; the scientist's `Federation.connect(data_dir)`
reads them (`scientist.connect`).

`atomic_write` is the one way every side writes a file that someone may read at any moment.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

FEDERATION_FILE = "federation.json"  # hospital names and URLs (no secrets)
CREDENTIALS_FILE = "credentials.json"  # the scientist's login at each hospital (mode 0600)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, mode: int = 0o600) -> None:
    """Write a file so that no reader ever sees it half-written, with `mode` from the start.

    `write(handle)` fills a temporary file in the same folder, created owner-only and then
    given `mode` (never briefly wider than asked); it is flushed to disk and renamed over
    `path`. If anything fails, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, *, mode: int = 0o600) -> None:
    """`payload` as indented JSON, atomically (`atomic_write`), owner-only by default."""
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()), mode=mode)
