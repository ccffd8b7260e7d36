"""A secure round's light phases as one signed HTTP call each, not as syft code calls.

The advertise, share, confirm and unmask phases read no private row and take the hospital
about 10 ms; as syft calls they cost about half a second each of syft's own work, which made
a light model's secure round twice its plain round. The datasite answers them on its own
route (`datasites.server.phase_route`) for the caller's approved study, signed with the same
key as the account's syft calls (`datasites.contract.phase_call`). A datasite without that
route answers 404, and the study sends those phases through syft as before.
"""

from __future__ import annotations

from typing import Any

from datasites.client.connection import post_phase_call, signing_identity
from datasites.contract.phase_call import LIGHT_PHASES, read_reply, seal


def is_light(batch: list[dict[str, Any]]) -> bool:
    """Whether every request of a batch is a phase the light route answers."""
    return bool(batch) and all(r.get("phase") in LIGHT_PHASES for r in batch)


def light_call(
    client: Any, server_key: str, study_id: str, payload: dict[str, Any]
) -> dict[str, Any] | None:
    """The datasite's reply to `payload` ({"batch": [...]}) over its light route, or None
    when it has none. Network errors propagate, as a syft call's would."""
    import requests

    seed, verify_key = signing_identity(client)
    body = seal(seed, verify_key, server_key, study_id, payload["batch"])
    try:
        raw = post_phase_call(client, body)
    except requests.ConnectionError:
        # A kept-alive connection the server closed while idle (a round of training can
        # outlast its keep-alive) fails at once: send it again, once. Safe: a hospital
        # answers a phase once and gives the same answer to the same call.
        raw = post_phase_call(client, body)
    return None if raw is None else read_reply(raw)
