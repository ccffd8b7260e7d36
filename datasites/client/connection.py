"""A syft client whose every request goes through one `requests.Session` we built.

syft 0.9.5's `HTTPConnection` sends its GETs and logins through `connection.session`, but its
signed API calls (`make_call`, everything after login) through the module-level
`requests.post`: no timeout, the default CA bundle, and `IGNORE_TLS_ERRORS` honoured. And
`ServerURL.__copy__` re-parses the URL with `from_url`, which sets port 443 for every https
URL, so each route syft derives (`with_path`) of `https://host:8443` would go to port 443.
A hospital served over TLS on its own port, with a certificate its invitation pinned,
therefore needs what syft does not offer: a URL whose copies keep their port
(`kept_port_url`), our session (`datasites.contract.pinned_tls.pinned_session`: exactly one
trusted certificate, no plain HTTP, timeouts and bounded retries) set before the first
request, and `make_call` routed through that session (on this connection only; syft's
classes are left alone).

Both the operator's tools (`datasites.server.admin_key`) and the scientist's library
(`scientist.connect`) connect through here. syft is imported on first use, so importing
this module (and `scientist`) loads no syft.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests


@cache
def kept_port_url() -> type:
    """syft's `ServerURL`, except that a copy keeps every field (built on first use)."""
    from syft.types.server_url import ServerURL

    class KeptPortURL(ServerURL):
        def __copy__(self) -> KeptPortURL:
            return KeptPortURL(self.protocol, self.host_or_ip, self.port, self.path, self.query)

    return KeptPortURL


def server_url(url: str) -> Any:
    """syft's URL object for `scheme://host:port`, built field by field (syft's own parser
    would make any https URL port 443)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r} is not of the form https://host:port.")
    return kept_port_url()(protocol=parts.scheme, host_or_ip=parts.hostname, port=parts.port)


def route_calls_through_session(connection: Any) -> None:
    """Send the connection's signed API calls through its session, as its GETs already are."""
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    def make_call(signed_call: Any) -> Any:
        import requests

        response = connection.session.post(
            str(connection.api_url),
            data=_serialize(obj=signed_call, to_bytes=True),
            headers=connection.headers,
            proxies={},
        )
        if response.status_code != 200:
            raise requests.ConnectionError(f"the datasite answered {response.status_code}")
        return _deserialize(response.content, from_bytes=True)

    # An instance attribute: every other connection in the process keeps syft's own.
    object.__setattr__(connection, "make_call", make_call)


def connection(url: str, session: requests.Session) -> Any:
    """syft's `HTTPConnection` to `url` whose every request goes through `session`."""
    from syft.client.client import HTTPConnection

    conn = HTTPConnection(url=server_url(url))
    conn.session_cache = session  # before the first request
    route_calls_through_session(conn)
    return conn


def load_syft() -> None:
    """Import syft in the calling thread. Its package imports itself in a cycle, so two
    threads importing it for the first time at once can see a half-initialised module
    ("partially initialized module 'syft' has no attribute 'serialize'"): a caller that
    logs in from several threads imports it first."""
    import syft  # noqa: F401


def guest_client(url: str, session: requests.Session) -> Any:
    """A syft guest client of the datasite at `url`, every request through `session`."""
    conn = connection(url, session)
    client_type = conn.get_client_type().unwrap()
    return client_type(connection=conn).guest()


def login_client(url: str, session: requests.Session, email: str, password: str) -> Any:
    """A syft client logged in as `email`, every request through `session`."""
    conn = connection(url, session)
    client_type = conn.get_client_type().unwrap()
    return client_type(connection=conn).login(email=email, password=password)


def post_phase_call(client: Any, body: bytes) -> bytes | None:
    """POST a signed light-phase call (`datasites.contract.phase_call`) to the client's
    datasite through its session; the reply's bytes, or None when the datasite has no such
    route (an older datasite: the caller sends the phases as syft calls instead)."""
    connection = client.connection
    url = str(connection.url.with_path("/api/v2/secure_phase"))
    response = connection.session.post(
        url, data=body, headers={"content-type": "application/json"}, proxies={}
    )
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise RuntimeError(f"the datasite answered HTTP {response.status_code} to a phase call")
    return response.content


def signing_identity(client: Any) -> tuple[bytes, str]:
    """(Ed25519 seed, verify key hex) of the account the client is logged in as."""
    credentials = client.credentials
    return bytes(credentials.signing_key), str(credentials.verify_key)
