"""The API map's query and the guest's map (issue 27, second attack): protocols 1 and 3
passed the gate and syft failed on them (a 500 and a 14 KB traceback in datasite.log per
request); the guest's 3 MB map cost 90 ms of the datasite's CPU per request, and 16 guest
threads slowed a scientist's call from 0.09 to 2.35 s. The gate runs here in front of an
app that must not be reached, with a worker of the test's own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from datasites.server.gate import Gate, GateSettings, _protocols
from datasites.site.audit import AuditLog


class Worker(SimpleNamespace):
    """A datasite where no key has an account; counts the maps it builds."""

    def __init__(self) -> None:
        from syft.server.credentials import SyftSigningKey

        def no_account(**_: Any) -> Any:
            raise LookupError("no such user")

        stash = SimpleNamespace(get_by_verify_key=no_account)
        super().__init__(
            signing_key=SyftSigningKey.generate(),
            verify_key=None,
            services=SimpleNamespace(user=SimpleNamespace(stash=stash)),
            built=[],
        )

    def get_api(self, key: Any, protocol: Any) -> Any:
        from syft.service.response import SyftSuccess

        self.built.append(protocol)
        return SyftSuccess(message=f"the guest's map, protocol {protocol}")


async def app_not_reached(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("syft was reached")


def api_map(front: Gate, protocol: str, address: str = "203.0.113.5") -> tuple[int, bytes]:
    from syft.server.credentials import SyftSigningKey

    key = str(SyftSigningKey.generate().verify_key)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v2/api",
        "headers": [],
        "client": (address, 40000),
        "server": ("127.0.0.1", 8080),
        "query_string": f"verify_key={key}&communication_protocol={protocol}".encode(),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_protocols_syft_cannot_serve_are_a_400_before_syft(tmp_path: Path) -> None:
    from syft.protocol.data_protocol import get_data_protocol

    front = Gate(app_not_reached, Worker(), AuditLog.open(tmp_path), root=tmp_path)
    latest = str(get_data_protocol().latest_version)

    assert _protocols() == (latest,)
    for protocol in ("1", "2", "3", "dev"):
        status, body = api_map(front, protocol)
        assert status == 400, (protocol, status)
        assert latest.encode() in body and len(body.splitlines()) == 1


def test_the_guests_map_is_built_once_and_bounded_per_address(tmp_path: Path) -> None:
    from syft.protocol.data_protocol import get_data_protocol
    from syft.serde.deserialize import _deserialize

    worker = Worker()
    settings = GateSettings(guest_map_rate=0.01, guest_map_burst=3)
    front = Gate(app_not_reached, worker, AuditLog.open(tmp_path), root=tmp_path, settings=settings)
    latest = str(get_data_protocol().latest_version)

    replies = [api_map(front, latest) for _ in range(5)]

    assert [status for status, _ in replies] == [200, 200, 200, 429, 429]
    assert "the guest's map" in str(_deserialize(replies[0][1], from_bytes=True))
    assert replies[0][1] == replies[2][1]
    assert len(worker.built) == 1, "built once, then sent from memory"
    assert api_map(front, latest, address="198.51.100.9")[0] == 200, "another address has its own"
