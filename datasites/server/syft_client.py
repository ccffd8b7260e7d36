"""A syft client whose every request goes through one `requests.Session` we built.

syft's `HTTPConnection` sends its GETs and logins through `connection.session`, but its
API calls (`make_call`, everything after login) through the module-level `requests.post`,
with the default trust store and no timeout. And `ServerURL.from_url` turns any https URL
into port 443, and `ServerURL.__copy__` goes through it, so every route syft derives from
an https URL (`with_path`) loses its port: syft 0.9.5 cannot reach https on any other
port. A hospital served over TLS with a self-signed certificate therefore needs what
syft does not offer: the URL built field by field and copied field by field
(`keep_url_ports`, process-wide: for http it changes nothing), our session
(`datasites.contract.pinned_tls.pinned_session`: exactly one trusted certificate, no plain
HTTP, timeouts and bounded retries) set before the first call, and `make_call` routed
through that session too.

The operator's tools use this (`datasites.server.admin_key.admin_client`). The scientist's
library may import only the contract, so it mirrors `guest_client` in its own code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests


def server_url(url: str) -> Any:
    """syft's `ServerURL` for `scheme://host:port`, keeping the port (syft's parser would
    make any https URL port 443)."""
    from syft.types.server_url import ServerURL

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r} is not of the form https://host:port.")
    return ServerURL(protocol=parts.scheme, host_or_ip=parts.hostname, port=parts.port)


def keep_url_ports() -> None:
    """Make `ServerURL.__copy__` keep every field (syft re-parses the URL, and its parser
    makes any https URL port 443). Idempotent."""
    from syft.types.server_url import ServerURL

    if getattr(ServerURL.__copy__, "keeps_port", False):
        return

    def copy_fields(self: ServerURL) -> ServerURL:
        return ServerURL(
            protocol=self.protocol,
            host_or_ip=self.host_or_ip,
            port=self.port,
            path=self.path,
            query=self.query,
        )

    copy_fields.keeps_port = True  # type: ignore[attr-defined]
    ServerURL.__copy__ = copy_fields  # type: ignore[method-assign]


def route_calls_through_session(connection: Any) -> None:
    """Make the connection's API calls use its session, as its GETs already do."""
    import requests
    from syft.serde.deserialize import _deserialize
    from syft.serde.serialize import _serialize

    def make_call(signed_call: Any) -> Any:
        response = connection.session.post(
            str(connection.api_url),
            data=_serialize(obj=signed_call, to_bytes=True),
            headers=connection.headers,
        )
        if response.status_code != 200:
            raise requests.ConnectionError(
                f"the datasite answered an API call with HTTP {response.status_code}."
            )
        return _deserialize(response.content, from_bytes=True)

    # An instance attribute: every other connection in the process keeps syft's own.
    object.__setattr__(connection, "make_call", make_call)


def guest_client(url: str, session: requests.Session) -> Any:
    """A syft guest client of the datasite at `url`, every request sent through `session`."""
    from syft.client.client import HTTPConnection

    keep_url_ports()
    connection = HTTPConnection(url=server_url(url))
    connection.session_cache = session  # before the first call: metadata is fetched below
    route_calls_through_session(connection)
    client_type = connection.get_client_type().unwrap()
    return client_type(connection=connection).guest()


def login_client(url: str, session: requests.Session, email: str, password: str) -> Any:
    """A syft client logged in as `email`, every request sent through `session`."""
    return guest_client(url, session).login(email=email, password=password)
