"""Is a datasite up? One probe for the launcher, the key rotation and the scientist.

A datasite is ready when syft's public metadata route answers 200: it needs no account and
reveals nothing beyond what the datasite publishes to anyone anyway. A datasite served over
TLS is probed trusting exactly the certificate given (the hospital's own, pinned), so a
probe never counts an impostor on the same address as up.
"""

from __future__ import annotations

import ssl
import urllib.request

READY_PATH = "/api/v2/metadata"


def is_up(url: str, timeout: float = 2.0, certificate_pem: str | None = None) -> bool:
    """Whether the datasite at `url` answers its metadata route with 200 within `timeout`.

    For an https `url`, `certificate_pem` is the one certificate trusted (without it, the
    system's trust store is); it is ignored for plain HTTP.
    """
    context: ssl.SSLContext | None = None
    if url.startswith("https://") and certificate_pem is not None:
        from datasites.contract.pinned_tls import pinned_context

        context = pinned_context(certificate_pem)
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=timeout, context=context) as response:
            return response.status == 200
    except OSError:
        return False
