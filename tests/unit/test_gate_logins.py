"""Login lockouts cannot be turned against the accounts they protect (issue 27, second
attack): 5 wrong passwords from anyone locked an email for everyone, and 21 failures for
made-up emails from one address locked every account behind it (a reverse proxy or a NAT
makes all callers one address). The gate runs here in front of a small login app of the
test's own that answers as syft's login route does (a `UserPrivateKey`, or a `SyftError`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from datasites.server.gate import Gate, GateSettings
from datasites.site.audit import AuditLog

PASSWORD = "the right one"


def gate(tmp_path: Path, **settings: Any) -> Gate:
    from syft.server.credentials import SyftSigningKey

    worker = SimpleNamespace(signing_key=SyftSigningKey.generate())
    return Gate(
        login_app, worker, AuditLog.open(tmp_path), root=tmp_path, settings=GateSettings(**settings)
    )


async def login_app(scope: Any, receive: Any, send: Any) -> None:
    from syft.serde.serialize import _serialize
    from syft.server.credentials import SyftSigningKey
    from syft.service.response import SyftError
    from syft.service.user.user import UserPrivateKey
    from syft.service.user.user_roles import ServiceRole

    body = json.loads((await receive())["body"])
    if body["password"] == PASSWORD:
        key = SyftSigningKey.generate()
        answer: Any = UserPrivateKey(
            email=body["email"], signing_key=key, role=ServiceRole.DATA_SCIENTIST
        )
    else:
        answer = SyftError(message="Invalid credentials.")
    reply = _serialize(answer, to_bytes=True)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": reply})


def attempt(front: Gate, email: str, address: str, password: str = "wrong") -> int:
    """The status of one login attempt for `email` from `address`; 200 with a key is a
    login (the gate's 429 is a lockout)."""
    body = json.dumps({"email": email, "password": password}).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v2/login",
        "headers": [(b"content-length", str(len(body)).encode())],
        "client": (address, 40000),
        "server": ("127.0.0.1", 8080),
        "query_string": b"",
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    status = sent[0]["status"]
    cookie = any(name == b"set-cookie" for name, _ in sent[0].get("headers", []))
    return 201 if status == 200 and cookie else status  # 201: logged in


def test_an_attackers_failures_do_not_lock_the_email_from_another_address(tmp_path: Path) -> None:
    front = gate(tmp_path)
    replies = [attempt(front, "alice@uni.org", "203.0.113.66") for _ in range(6)]

    assert replies[:5] == [200] * 5 and replies[5] == 429, replies
    assert attempt(front, "alice@uni.org", "198.51.100.7", PASSWORD) == 201
    assert attempt(front, "alice@uni.org", "203.0.113.66", PASSWORD) == 429, (
        "its own pair stays locked"
    )


def test_made_up_emails_from_one_address_do_not_lock_who_logged_in_from_there(
    tmp_path: Path,
) -> None:
    front = gate(tmp_path)
    proxy = "10.0.0.1"  # behind a reverse proxy every caller is this one address
    assert attempt(front, "alice@uni.org", proxy, PASSWORD) == 201

    replies = [attempt(front, f"nobody{i}@y.org", proxy) for i in range(25)]

    assert 429 in replies, "the address's own cap still bounds spraying"
    assert attempt(front, "someone-new@uni.org", proxy, PASSWORD) == 429
    assert attempt(front, "alice@uni.org", proxy, PASSWORD) == 201, "alice logged in from here"


def test_guessing_one_email_from_many_addresses_stays_bounded(tmp_path: Path) -> None:
    front = gate(tmp_path)
    assert attempt(front, "alice@uni.org", "198.51.100.7", PASSWORD) == 201
    tried = 0
    for i in range(200):
        for _ in range(5):
            if attempt(front, "alice@uni.org", f"203.0.{i // 250}.{i % 250}") == 200:
                tried += 1

    assert tried <= 50, tried  # GateSettings.email_login_failures
    assert attempt(front, "alice@uni.org", "192.0.2.9", PASSWORD) == 429, "a new address waits"
    assert attempt(front, "alice@uni.org", "198.51.100.7", PASSWORD) == 201, "hers does not"
