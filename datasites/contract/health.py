"""Is a datasite up? One probe for the launcher, the key rotation and the scientist.

A datasite is ready when syft's public metadata route answers 200: it needs no account and
reveals nothing beyond what the datasite publishes to anyone anyway.
"""

from __future__ import annotations

import urllib.request

READY_PATH = "/api/v2/metadata"


def is_up(url: str, timeout: float = 2.0) -> bool:
    """Whether the datasite at `url` answers its metadata route with 200 within `timeout`."""
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False
