"""The gate against slow and piled-up senders (found live: 400 connections trickling a
byte every 10 s stayed open, and 20,000 of them used up a datasite's file descriptors).

The gate is an ASGI middleware; here it runs in front of a small app of the test's own,
with syft's real signing key for its cookie secret (nothing else of syft is reached on the
routes used)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from datasites.server.gate import Gate, GateSettings
from datasites.site.audit import AuditLog


def gate(tmp_path: Path, app: Any, **settings: Any) -> Gate:
    from syft.server.credentials import SyftSigningKey

    worker = SimpleNamespace(signing_key=SyftSigningKey.generate())
    audit = AuditLog.open(tmp_path)
    return Gate(app, worker, audit, root=tmp_path, settings=GateSettings(**settings))


def scope(method: str, path: str, address: str, length: int | None = None) -> dict:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "client": (address, 40000),
        "server": ("127.0.0.1", 8080),
        "query_string": b"",
    }


async def run(front: Gate, request: dict, receive: Any) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await front(request, receive, send)
    return sent


async def app_not_reached(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app was reached")


def test_a_body_that_trickles_is_cut_off(tmp_path: Path) -> None:
    front = gate(tmp_path, app_not_reached, body_seconds=0.3)
    chunks = iter([b"{", b'"'])

    async def trickle() -> dict:
        chunk = next(chunks, None)
        if chunk is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": chunk, "more_body": True}

    started = time.monotonic()
    sent = asyncio.run(run(front, scope("POST", "/api/v2/login", "198.18.0.7", 100), trickle))
    assert sent[0]["status"] == 408, sent
    assert time.monotonic() - started < 10, "the gate waited on the body for too long"
    refusals = [e for e in AuditLog.open(tmp_path).entries() if e["event"] == "refused"]
    assert any(e["reason"] == "a slow body" for e in refusals), refusals


def test_a_declared_oversized_body_is_refused_unread(tmp_path: Path) -> None:
    front = gate(tmp_path, app_not_reached)
    read = []

    async def receive() -> dict:
        read.append(1)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    request = scope("POST", "/api/v2/secure_phase", "198.18.0.7", 10**12)
    sent = asyncio.run(run(front, request, receive))
    assert sent[0]["status"] == 413 and not read, (sent, read)


def test_an_address_may_hold_only_so_many_requests_at_once(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    front = gate(tmp_path, slow_app, in_flight_per_address=2)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario() -> list[int]:
        held = [
            asyncio.create_task(run(front, scope("GET", "/api/v2/metadata", "198.18.0.7"), receive))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        third = await run(front, scope("GET", "/api/v2/metadata", "198.18.0.7"), receive)
        other = asyncio.create_task(
            run(front, scope("GET", "/api/v2/metadata", "198.18.0.9"), receive)
        )
        await asyncio.sleep(0.05)
        release.set()
        done = [await task for task in [*held, other]]
        again = await run(front, scope("GET", "/api/v2/metadata", "198.18.0.7"), receive)
        return [third[0]["status"], *(d[0]["status"] for d in done), again[0]["status"]]

    assert asyncio.run(scenario()) == [429, 200, 200, 200, 200]
