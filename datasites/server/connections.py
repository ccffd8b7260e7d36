"""Connections that send no request are closed: uvicorn's HTTP protocol with deadlines.

uvicorn 0.34 times out a kept-alive connection only after a response, so a connection that
never finishes its request headers (idle, or one header byte every few seconds) is held
forever, before the gate (`datasites.server.gate`, which starts once the headers are in)
can count or refuse it. Found live: 500 idle connections from one address stayed open
for a minute, and 20,000 used up a datasite's file descriptors so that it answered nobody.
This protocol closes a connection whose next request's headers have not arrived within
`header_seconds` of its opening or of its last response, and refuses more than
`connections_per_address` open connections from one address.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

HEADER_SECONDS = float(os.environ.get("DATASITE_GATE_HEADER_SECONDS", "20"))
CONNECTIONS_PER_ADDRESS = int(os.environ.get("DATASITE_GATE_CONNECTIONS_PER_ADDRESS", "128"))
_OPEN: dict[str, int] = {}  # open connections by peer address (the event loop's thread only)


class DeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's own HTTP protocol (httptools or h11) with a header deadline and a cap on
    connections per address."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        self._counted = False
        self._deadline: asyncio.TimerHandle | None = None
        if _OPEN.get(self._peer, 0) >= CONNECTIONS_PER_ADDRESS:
            transport.close()  # nothing read, nothing answered: the address holds enough
            return
        _OPEN[self._peer] = _OPEN.get(self._peer, 0) + 1
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        if getattr(self, "_counted", False):
            left = _OPEN.pop(self._peer, 1) - 1
            if left > 0:
                _OPEN[self._peer] = left
            self._counted = False
            super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        """Close the connection unless a new request's headers arrive in time."""
        if self._deadline is not None:
            self._deadline.cancel()
        waiting_after = getattr(self, "cycle", None)  # the last request, or None
        self._deadline = self.loop.call_later(HEADER_SECONDS, self._expire, waiting_after)

    def _expire(self, waiting_after: Any) -> None:
        self._deadline = None
        if getattr(self, "cycle", None) is waiting_after and not self.transport.is_closing():
            self.transport.close()
