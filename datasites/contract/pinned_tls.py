"""HTTPS to one hospital that trusts exactly the certificate its invitation pinned.

syft's `HTTPConnection` sends every request with `verify=True` (or False when the
environment says `IGNORE_TLS_ERRORS`), which would trust any public CA, or nothing. A
hospital's certificate is usually self-signed and handed over in its invitation, so the
session built here ignores what a request asks for and always verifies against that one
certificate: its chain, its dates and the hostname, and then its SHA-256 fingerprint. A
plain-HTTP URL through this session is refused (no downgrade), and every request gets a
timeout and a bounded number of retries with backoff, so a silent hospital cannot hang a
study.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from datasites.contract.invitation import InvitationError, certificate_fingerprint


class PinnedTLSError(requests.exceptions.SSLError):
    """A request this session will not send, or a certificate it does not trust."""


@dataclass(frozen=True)
class NetworkPolicy:
    """How long to wait for a hospital and how often to try again.

    `read_timeout` bounds the wait for an answer's next bytes; a training call answers only
    when its round is done, so it is generous. Retries cover connecting and idempotent reads
    (syft's API calls are signed POSTs that a hospital deduplicates itself, so the scientist
    repeats those at the level of the study, not here).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 900.0
    retries: int = 3
    backoff: float = 0.5

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "backoff"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 86_400:
                raise ValueError(f"{name} must be a number of seconds in (0, 86400).")
        if not isinstance(self.retries, int) or not 0 <= self.retries <= 10:
            raise ValueError("retries must be an integer in 0-10.")

    def retry(self) -> Retry:
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=0,
            other=0,
            backoff_factor=self.backoff,
            allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False,
        )


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """TLS 1.2+ client context whose only trust anchor is `certificate_pem`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=certificate_pem)
    except ssl.SSLError:
        raise InvitationError("the certificate is not a PEM X.509 certificate.") from None
    return context


class PinnedAdapter(HTTPAdapter):
    """An adapter that verifies against one pinned certificate whatever `verify` says."""

    def __init__(self, certificate_pem: str, fingerprint: str, network: NetworkPolicy) -> None:
        if certificate_fingerprint(certificate_pem) != fingerprint:
            raise InvitationError("the fingerprint does not match the pinned certificate.")
        self._context = pinned_context(certificate_pem)
        self._fingerprint = fingerprint
        self._network = network
        super().__init__(max_retries=network.retry())

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict, dict]:
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {
            "ssl_context": self._context,
            "cert_reqs": "CERT_REQUIRED",
            "assert_fingerprint": self._fingerprint,
        }

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if not str(request.url).lower().startswith("https://"):
            raise PinnedTLSError(
                f"refusing plain HTTP to {request.url}: this hospital is pinned to TLS."
            )
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (self._network.connect_timeout, self._network.read_timeout)
        kwargs["verify"] = True  # what verifies is this adapter's context, never a flag
        return super().send(request, **kwargs)


class TimeoutAdapter(HTTPAdapter):
    """Plain HTTP for a loopback hospital, with the same timeouts and retries."""

    def __init__(self, network: NetworkPolicy) -> None:
        self._network = network
        super().__init__(max_retries=network.retry())

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (self._network.connect_timeout, self._network.read_timeout)
        return super().send(request, **kwargs)


def pinned_session(
    certificate_pem: str | None,
    fingerprint: str | None,
    network: NetworkPolicy | None = None,
) -> requests.Session:
    """A session for one hospital: pinned TLS when a certificate is given, else plain HTTP
    (which `datasites.contract.invitation.check_url` allows only to loopback)."""
    network = network or NetworkPolicy()
    session = requests.Session()
    session.trust_env = False  # no proxy or CA bundle from the environment
    if certificate_pem is None:
        adapter: HTTPAdapter = TimeoutAdapter(network)
    else:
        if fingerprint is None:
            fingerprint = certificate_fingerprint(certificate_pem)
        adapter = PinnedAdapter(certificate_pem, fingerprint, network)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
