"""Idle and slow-header connections are closed, and one address holds only so many
(found live: 500 idle connections stayed open, 20,000 exhausted a datasite's files).

A real uvicorn server on loopback with the datasite's protocol class, in front of a small
app of the test's own."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

import datasites.server.connections as connections


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(connections, "HEADER_SECONDS", 0.5)
    monkeypatch.setattr(connections, "CONNECTIONS_PER_ADDRESS", 3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        hello, host="127.0.0.1", port=port, http=connections.DeadlineProtocol, log_level="error"
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    runner.should_exit = True
    thread.join(10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(4096)


def test_a_connection_that_sends_no_request_is_closed(server: int) -> None:
    idle = socket.create_connection(("127.0.0.1", server), timeout=5)
    slow = socket.create_connection(("127.0.0.1", server), timeout=5)
    slow.sendall(b"GET / HTTP/1.1\r\n")  # headers begun, never finished
    try:
        assert closed_within(idle, 5), "an idle connection stayed open"
        assert closed_within(slow, 5), "a connection with unfinished headers stayed open"
    finally:
        idle.close()
        slow.close()
    assert b" 200 " in get(server)


def test_one_address_holds_only_so_many_connections(server: int) -> None:
    held = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", server), timeout=5)
    try:
        assert closed_within(extra, 0.4), "a fourth connection from one address was kept"
    finally:
        for sock in [*held, extra]:
            sock.close()
    time.sleep(0.2)
    assert b" 200 " in get(server)
