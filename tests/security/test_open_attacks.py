"""Attacks the last live audit found BROKEN (issue 27), as tests that failed before their fix.

A guest's malformed API-map request got a 500 and a 13 KB traceback in datasite.log per
call (a log anyone could grow without bound); it is now a 400 of one sentence from the gate,
counted in the gate's aggregated refusal audit. The gate also read the first of two
`verify_key` values while syft served the map of the last one.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

from datasites.site.audit import AuditLog
from tests.conftest import Launch

HOSPITAL = "hospital-a"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read()
    except HTTPError as error:
        return error.code, error.read()


def _protocol() -> str:
    from syft.protocol.data_protocol import get_data_protocol

    return str(get_data_protocol().latest_version)


def _gate_refusals(guarded: Launch, start: int) -> list[dict[str, Any]]:
    entries = AuditLog.open(Path(guarded.data_dir) / HOSPITAL).entries()[start:]
    return [e for e in entries if e["event"] == "refused" and e.get("path") == "api"]


def test_a_guest_cannot_grow_the_datasite_log(guarded: Launch) -> None:
    url = guarded.hospital(HOSPITAL)["url"]
    log = guarded.data_dir / HOSPITAL / "datasite.log"
    audit_start = len(AuditLog.open(Path(guarded.data_dir) / HOSPITAL).entries())
    before = log.stat().st_size
    key = secrets.token_hex(32)
    queries = [
        f"verify_key={secrets.token_hex(32)}&communication_protocol=x",  # the live attack
        f"verify_key={key}&communication_protocol=1.5",
        f"verify_key={key}&communication_protocol=-1",
        f"verify_key={key}&communication_protocol=0",
        f"verify_key={key}&communication_protocol={'9' * 5000}",
        f"verify_key={key}&communication_protocol=dev",
        f"verify_key={key}&communication_protocol=",
        f"verify_key={key}",
        f"communication_protocol={_protocol()}",
        f"verify_key=&communication_protocol={_protocol()}",
        f"verify_key={'ab' * 3000}&communication_protocol={_protocol()}",
        f"verify_key={key}&communication_protocol={_protocol()}&communication_protocol=x",
        f"verify_key={key}&communication_protocol={_protocol()}&extra=1",
        "",
    ]
    replies = [_get(f"{url}/api/v2/api?{query}") for query in queries * 3]
    statuses = [status for status, _ in replies]
    grown = log.stat().st_size - before

    assert set(statuses) == {400}, statuses
    for _, body in replies:
        text = body.decode()
        assert len(text) < 300 and len(text.splitlines()) == 1 and "Traceback" not in text
    assert grown < 30 * 200, f"datasite.log grew by {grown} bytes for {len(replies)} refusals"
    refused = _gate_refusals(guarded, audit_start)
    assert refused and all(e.get("layer") == "gate" for e in refused), refused
    assert len(refused) <= 3, f"{len(replies)} refusals wrote {len(refused)} audit entries"
    # a well-formed request still gets a guest's map
    status, body = _get(f"{url}/api/v2/api?verify_key={key}&communication_protocol={_protocol()}")
    assert status == 200 and len(body) > 1000, status


def test_a_second_verify_key_does_not_fetch_the_admins_map(guarded: Launch) -> None:
    """The gate checked the first `verify_key` (a guest's key: served), syft answered with
    the map of the last one (the admin's, which a stranger is refused: test_guest_floods)."""
    url = guarded.hospital(HOSPITAL)["url"]
    _, metadata = _get(f"{url}/api/v2/metadata")
    admin_key = json.loads(metadata)["verify_key"]
    guest_key = secrets.token_hex(32)
    protocol = _protocol()

    status, body = _get(
        f"{url}/api/v2/api?verify_key={guest_key}&communication_protocol={protocol}"
        f"&verify_key={admin_key}"
    )

    assert status == 400, f"a {status} of {len(body)} bytes"
