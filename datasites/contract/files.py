"""Files one side writes and the other reads, and how any file is written safely.

`launch.py` writes them into the data dir; the scientist's `Federation.connect(data_dir)`
reads them (`scientist.connect`).

`atomic_write` is the one way every side writes a file that someone may read at any moment.
"""

from __future__ import annotations

import json
import os
import stat
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


# A JSON file one party hands another (an invitation, a federation file, a partner
# registry) is small and flat: bound its size and nesting before parsing, so a hostile file
# is one clear error rather than a RecursionError or a memory blow-up (issue 27).
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 16


class JsonFileError(ValueError):
    """A JSON file is too large, too deeply nested or not JSON; the message says which."""


def bounded_json(
    raw: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse `raw` as JSON after checking its size and its nesting depth (outside strings)."""
    if len(raw) > max_bytes:
        raise JsonFileError(f"it is larger than {max_bytes} bytes")
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise JsonFileError(f"it nests deeper than {max_depth} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise JsonFileError(f"it is not JSON ({error})") from None


def read_bounded_json(path: Path, **bounds: int) -> Any:
    """`bounded_json` of a file, reading at most one byte past the size bound."""
    limit = bounds.get("max_bytes", MAX_JSON_BYTES)
    with open_regular(path) as handle:
        raw = handle.read(limit + 1)
    return bounded_json(raw, **bounds)


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file; JsonFileError at once otherwise.

    A FIFO, a device or a socket named like a data file would block `open` (a FIFO with no
    writer) or a read forever, or stream without end: it is opened without blocking
    (O_NONBLOCK, which a regular file ignores), checked with fstat on the open descriptor
    (no swap between check and use), and refused unless it is a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JsonFileError("it is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
