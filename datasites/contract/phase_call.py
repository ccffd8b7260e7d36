"""A secure study's light phases on the wire: one signed JSON call, answered outside syft.

A secure round's advertise, share, confirm and unmask phases read no private row and do
about 10 ms of work at the hospital, but as syft code calls each cost about half a second
(syft loads the code, its policies, the assets' pointers and stores the result), which made
a secure round of a light model twice a plain one. The scientist sends them to the
datasite's own route (`datasites.server.phase_route`) instead, as this envelope:

- `key`: the scientist's syft verify key (hex), the same key that signs syft calls;
- `message`: this module's `stored` JSON of {"server", "study", "issued", "batch"}: the
  datasite's own verify key (a call signed for one hospital is refused by every other),
  the study id, the time it was signed (refused outside `MAX_SKEW_S`), and the phase
  requests, exactly as a syft call would carry them;
- `signature`: Ed25519 over `DOMAIN` + message, by the scientist's signing key.

The datasite answers only its own approved template code of that account and study, runs
it through the same runtime entry (`datasites.runtime.execute.execute_light`) and audits
it the same way. Replies are `stored` JSON too: plain data, never code.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from datasites.contract.files import JsonFileError, bounded_json
from datasites.contract.secure_sum import KEY_BYTES, sign, verify
from datasites.contract.stored import StoredFormatError, dumps, loads

DOMAIN = b"datasites secure phase call v1\0"
MAX_SKEW_S = 300.0
MAX_BODY_BYTES = 64 * 1024  # the gate's small-body limit: a light phase is a few kB
MAX_REPLY_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 24
LIGHT_PHASES = frozenset({"advertise", "share", "confirm", "unmask"})
_STUDY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class PhaseCallError(ValueError):
    """An envelope that is not a well-formed, signed, current call; says what is wrong."""


@dataclass(frozen=True)
class PhaseCall:
    """A verified call: who signed it, for which study, and its phase requests."""

    key: str
    study: str
    batch: list[dict[str, Any]]


def seal(
    signing_seed: bytes,
    verify_key: str,
    server: str,
    study: str,
    batch: list[dict[str, Any]],
    now: float | None = None,
) -> bytes:
    """The body of a call of `batch` for `study` to the datasite whose key is `server`."""
    message = dumps(
        {
            "server": server,
            "study": study,
            "issued": time.time() if now is None else now,
            "batch": batch,
        }
    ).decode("utf-8")
    signature = sign(signing_seed, DOMAIN + message.encode("utf-8"))
    envelope = {"key": verify_key, "message": message, "signature": signature.hex()}
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def open_call(body: bytes, server: str, now: float | None = None) -> PhaseCall:
    """The verified call in `body` for the datasite `server`, or PhaseCallError."""
    try:
        envelope = bounded_json(body, max_bytes=MAX_BODY_BYTES, max_depth=2)
    except JsonFileError as error:
        raise PhaseCallError(f"the call is not a JSON envelope: {error}.") from None
    if not isinstance(envelope, dict) or set(envelope) != {"key", "message", "signature"}:
        raise PhaseCallError("a phase call is {key, message, signature}.")
    key, message, signature = (envelope[k] for k in ("key", "message", "signature"))
    if not all(isinstance(v, str) for v in (key, message, signature)):
        raise PhaseCallError("a phase call's key, message and signature are strings.")
    if not _HEX_KEY.fullmatch(key) or not re.fullmatch(r"[0-9a-f]{128}", signature):
        raise PhaseCallError("a phase call's key and signature are lowercase hex.")
    raw = message.encode("utf-8")
    if not verify(bytes.fromhex(key), DOMAIN + raw, bytes.fromhex(signature)):
        raise PhaseCallError("the call's signature is invalid.")
    return _checked(key, raw, server, time.time() if now is None else now)


def _checked(key: str, raw: bytes, server: str, now: float) -> PhaseCall:
    try:
        bounded_json(raw, max_bytes=MAX_BODY_BYTES, max_depth=MAX_DEPTH)
        message = loads(raw)
    except (JsonFileError, StoredFormatError) as error:
        raise PhaseCallError(f"the call's message is not plain data: {error}.") from None
    if not isinstance(message, dict) or set(message) != {"server", "study", "issued", "batch"}:
        raise PhaseCallError("a phase call's message is {server, study, issued, batch}.")
    if message["server"] != server:
        raise PhaseCallError("the call was signed for another datasite.")
    issued = message["issued"]
    try:
        issued = float(issued) if type(issued) in (int, float) else math.nan
    except OverflowError:  # an int of hundreds of digits
        issued = math.nan
    if not math.isfinite(issued):
        raise PhaseCallError("the call's issued time is not a number.")
    if abs(now - issued) > MAX_SKEW_S:
        raise PhaseCallError(
            f"the call was signed more than {MAX_SKEW_S:.0f} s from this datasite's clock; "
            "check both clocks and send it again."
        )
    study, batch = message["study"], message["batch"]
    if not isinstance(study, str) or not _STUDY.fullmatch(study):
        raise PhaseCallError("the call's study is not a study id.")
    if not isinstance(batch, list) or not 1 <= len(batch) <= 3:
        raise PhaseCallError("a phase call carries 1-3 phase requests.")
    for request in batch:
        phase = request.get("phase") if isinstance(request, dict) else None
        if not isinstance(phase, str) or phase not in LIGHT_PHASES:
            raise PhaseCallError(
                f"this route answers only the phases {', '.join(sorted(LIGHT_PHASES))}; "
                "the mask phase is a syft call."
            )
    return PhaseCall(key, study, batch)


def reply_body(reply: dict[str, Any]) -> bytes:
    return dumps(reply)


def read_reply(raw: bytes) -> dict[str, Any]:
    """A datasite's reply, as plain data; PhaseCallError if it is not one."""
    if len(raw) > MAX_REPLY_BYTES:
        raise PhaseCallError("the datasite's reply is too large.")
    try:
        bounded_json(raw, max_bytes=MAX_REPLY_BYTES, max_depth=MAX_DEPTH)
        value = loads(raw)
    except (JsonFileError, StoredFormatError) as error:
        raise PhaseCallError(f"the datasite's reply is not plain data: {error}.") from None
    if not isinstance(value, dict):
        raise PhaseCallError("the datasite's reply is not a dict.")
    return value


def check_key(value: str) -> str:
    if not isinstance(value, str) or not _HEX_KEY.fullmatch(value):
        raise PhaseCallError("a verify key is 32 bytes of lowercase hex.")
    if len(bytes.fromhex(value)) != KEY_BYTES:
        raise PhaseCallError("a verify key is 32 bytes.")
    return value
