"""What a secure study's messages look like between a hospital and the scientist.

`datasites.contract.secure_sum` is the maths; this module is the wire: every message the
scientist relays is checked here by type and length before the maths sees it (a hospital
treats the relay as hostile), and one vector layout (`Layout`) tells both sides where a
round's masked entries are: the training update, weighted by the hospital's released size,
then that size, then the evaluation's noised counts and loss steps. The scientist's sum of
the vectors is then everything the plain protocol would have sent, summed over hospitals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasites.contract.encoding import N_CLASSES
from datasites.contract.secure_sum import (
    KEY_BYTES,
    MAX_PARTY_ID,
    SEAL_OVERHEAD,
    SHARE_BYTES,
    SIGNATURE_BYTES,
    Advert,
    Quantizer,
    UnmaskingReply,
)

PHASES = ("advertise", "share", "mask", "confirm", "unmask")
SEALED_BYTES = 2 * SHARE_BYTES + SEAL_OVERHEAD
MAX_MASKED_ENTRIES = 50_000_000


class WireError(ValueError):
    """A relayed message is malformed; the message names the part, never its content."""


def _party(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTY_ID:
        raise WireError(f"{what} must be a party id (a positive int).")
    return value


def _raw(value: Any, what: str, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise WireError(f"{what} must be {length} bytes.")
    return value


def advert_to_wire(advert: Advert) -> dict[str, Any]:
    return {
        "party": advert.party,
        "c_public": advert.c_public,
        "s_public": advert.s_public,
        "signature": advert.signature,
    }


def advert_from_wire(value: Any) -> Advert:
    if not isinstance(value, dict) or set(value) != {"party", "c_public", "s_public", "signature"}:
        raise WireError("an advert must be a dict of party, c_public, s_public and signature.")
    return Advert(
        _party(value["party"], "an advert's party"),
        _raw(value["c_public"], "an advert's c_public", KEY_BYTES),
        _raw(value["s_public"], "an advert's s_public", KEY_BYTES),
        _raw(value["signature"], "an advert's signature", SIGNATURE_BYTES),
    )


def adverts_from_wire(value: Any, parties: set[int]) -> dict[int, Advert]:
    """Adverts keyed by party id, each filed under its own party, all among `parties`."""
    if not isinstance(value, dict) or not value or len(value) > len(parties):
        raise WireError("adverts must be a dict of party id to advert, one per partner at most.")
    out = {}
    for party, advert in value.items():
        checked = advert_from_wire(advert)
        if _party(party, "an advert's key") != checked.party or party not in parties:
            raise WireError(f"the advert filed under {party} is not a partner's own.")
        out[party] = checked
    return out


def inbox_from_wire(value: Any, parties: set[int]) -> dict[int, bytes]:
    """Sealed share pairs keyed by sender id (each exactly one sealed pair long)."""
    return _by_partner(value, parties, "shares", "sealed shares", SEALED_BYTES)


def _by_partner(value: Any, parties: set[int], what: str, item: str, length: int) -> dict:
    """A dict of partner id to `length` bytes, at most one entry per partner."""
    if not isinstance(value, dict) or len(value) > len(parties):
        raise WireError(f"{what} must be a dict of partner id to {item}.")
    out = {}
    for party, raw in value.items():
        if _party(party, f"a key of {what}") not in parties:
            raise WireError(f"{what} name {party}, who is not a partner.")
        out[party] = _raw(raw, item, length)
    return out


def ids_from_wire(value: Any, what: str, parties: set[int]) -> set[int]:
    if not isinstance(value, list | tuple) or len(value) > len(parties):
        raise WireError(f"{what} must be a list of partner ids.")
    ids = {_party(v, what) for v in value}
    if len(ids) != len(value) or not ids <= parties:
        raise WireError(f"{what} must list distinct partner ids.")
    return ids


def signatures_from_wire(value: Any, parties: set[int]) -> dict[int, bytes]:
    """Consistency signatures keyed by signer id, each one Ed25519 signature long."""
    return _by_partner(value, parties, "signatures", "a signature", SIGNATURE_BYTES)


def reply_to_wire(reply: UnmaskingReply) -> dict[str, Any]:
    return {"party": reply.party, "b_shares": reply.b_shares, "s_shares": reply.s_shares}


def reply_from_wire(value: Any) -> UnmaskingReply:
    if not isinstance(value, dict) or set(value) != {"party", "b_shares", "s_shares"}:
        raise WireError("an unmasking reply must be a dict of party, b_shares and s_shares.")

    def shares(part: Any, what: str) -> dict[int, bytes]:
        if not isinstance(part, dict) or len(part) > MAX_PARTY_ID:
            raise WireError(f"{what} must be a dict of party id to share.")
        return {_party(k, what): _raw(v, what, SHARE_BYTES) for k, v in part.items()}

    return UnmaskingReply(
        _party(value["party"], "a reply's party"),
        shares(value["b_shares"], "b shares"),
        shares(value["s_shares"], "s shares"),
    )


def masked_from_wire(value: Any, length: int) -> np.ndarray:
    """A masked vector sent as raw little-endian uint64 bytes, `length` entries."""
    if not isinstance(value, bytes) or len(value) != 8 * length:
        raise WireError(f"a masked vector must be {length} uint64 entries as bytes.")
    return np.frombuffer(value, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class Layout:
    """Where each part of a round's vector lies: `weights` (name, shape) in the model's order
    (empty when the call trains nothing), then the size, then `counts` (name, shape) of the
    evaluation (empty when none is due) and its loss steps."""

    weights: tuple[tuple[str, tuple[int, ...]], ...]
    counts: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def float_entries(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.weights)

    @property
    def int_entries(self) -> int:
        trained = 1 if self.weights else 0
        evaluated = sum(int(np.prod(shape)) for _, shape in self.counts) + 1 if self.counts else 0
        return trained + evaluated

    @property
    def length(self) -> int:
        return self.float_entries + self.int_entries

    def pack(
        self,
        quantizer: Quantizer,
        weighted_update: Mapping[str, np.ndarray] | None,
        n: int | None,
        counts: Mapping[str, np.ndarray] | None,
        loss_steps: int | None,
    ) -> np.ndarray:
        """The round's vector in the ring: the update by fixed point, integers as they are."""
        parts = [quantizer.encode(_flat(weighted_update, self.weights))] if self.weights else []
        ints: list[np.ndarray] = []
        if self.weights:
            ints.append(np.array([n], np.int64))
        if self.counts:
            ints.append(_flat(counts, self.counts).astype(np.int64))
            ints.append(np.array([loss_steps], np.int64))
        if ints:
            parts.append(np.concatenate(ints).astype(np.int64).view(np.uint64))
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def unpack(self, quantizer: Quantizer, total: np.ndarray) -> dict[str, Any]:
        """The summed parts: `weighted_update` (dict), `n`, `counts` (dict), `loss_steps`."""
        if total.shape != (self.length,):
            raise WireError(f"the summed vector must have {self.length} entries.")
        floats = quantizer.decode(total[: self.float_entries])
        ints = total[self.float_entries :].view(np.int64)
        out: dict[str, Any] = {}
        if self.weights:
            out["weighted_update"] = _unflat(floats, self.weights)
            out["n"] = int(ints[0])
            ints = ints[1:]
        if self.counts:
            out["counts"] = _unflat(ints[:-1], self.counts)
            out["loss_steps"] = int(ints[-1])
        return out


def _flat(values: Mapping[str, Any] | None, shapes: tuple[tuple[str, tuple[int, ...]], ...]):
    if values is None:
        raise WireError("a part the layout names is missing.")
    return np.concatenate([np.asarray(values[k], np.float64).reshape(-1) for k, _ in shapes])


def _unflat(flat: np.ndarray, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict:
    out, start = {}, 0
    for key, shape in shapes:
        size = int(np.prod(shape))
        out[key] = flat[start : start + size].reshape(shape)
        start += size
    return out


def count_shapes(task: str, bins: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The evaluation counts' names and shapes for `bins` histogram bins."""
    if task == "ehr":
        return (("histogram", (2, bins)),)
    return (("confusion", (N_CLASSES, N_CLASSES)), ("ovr", (N_CLASSES, 2, bins)))


def round_layout(plan: Any, round_: int, edges: np.ndarray) -> Layout:
    """The layout of call `round_` of a secure `plan` (a `Plan`), with evaluation edges
    `edges` (validated): training for rounds 1..rounds, an evaluation when one is due."""
    from datasites.contract.zoo import build_model

    weights: tuple = ()
    if round_ <= plan.rounds:
        model = build_model(plan.model, **plan.model_kwargs)
        weights = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
    counts: tuple = ()
    if round_ - 1 in plan.eval_rounds():
        counts = count_shapes(plan.task, int(np.asarray(edges).shape[-1]) - 1)
    return Layout(weights, counts)
