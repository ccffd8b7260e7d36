"""What both sides do around syft's client without importing syft: silence its banners,
and read the message out of its errors.

syft prints login banners, warnings and progress bars on every call; a notebook, a CLI or
a launcher that prints its own story swallows them. syft returns (or raises) `SyftError`
values whose text sits in `public_message` or `message`; every caller reads it the same way.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

# The runtime ends a refusal with this when the same call, asked again, may succeed (a
# release another call charged and is still computing); the scientist's study retries on it.
CALL_AGAIN = "call again later"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow stdout and stderr in this block.

    Use it once in the calling thread around a parallel block, never inside workers:
    swapping sys.stdout from several threads at once would race.
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def syft_message(error: Any) -> str:
    """The text of a syft error (its public message first), else the value as a string."""
    text = getattr(error, "public_message", None) or getattr(error, "message", None) or error
    return str(text or type(error).__name__)


# A request's status, in the words both sides show: syft's REJECTED reads "denied".
PENDING, APPROVED, DENIED = "pending", "approved", "denied"


def request_status(request: Any) -> str:
    """pending, approved or denied, from a syft request's status enum."""
    name = str(request.status.name).lower()
    return {"rejected": DENIED}.get(name, name)
