"""Secure aggregation inside the hospital: the four phases of a round, each answered once.

A secure study (`Plan.aggregation == "secure"`) releases nothing the scientist can read on
its own. A round r is four calls, relayed by the scientist between the plan's partners
(`datasites.contract.secure_sum` has the protocol, `datasites.contract.secure_wire` the
messages):

- advertise: this round's two public keys, signed with the datasite's own signing key;
- share: given every partner's advert (each verified against the plan's partner keys), the
  shares of this hospital's self-mask seed and mask key, sealed to each partner;
- mask: given the shares sealed to it and the global weights, it evaluates and trains as a
  plain study would (the same ledger charges, the same recorded releases), then returns
  only the masked vector: its training update weighted by its released size, that size, and
  the evaluation's noised counts and loss, in the ring;
- unmask: given who survived and who dropped, the shares that remove the masks of the sum,
  never both of one partner's secrets.

Every answer is stored before it leaves (`datasites.site.secure_store`) and a repeated call
gets the stored one, so no relay can obtain two different answers to one phase.
"""

from __future__ import annotations

import hashlib
import pickle
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasites.contract.plan import Plan
from datasites.contract.secure_sum import (
    Quantizer,
    make_advert,
    mask_update,
    new_round_keys,
    open_shares,
    seal_shares,
    unmasking_reply,
    verify_adverts,
)
from datasites.contract.secure_wire import (
    PHASES,
    Layout,
    advert_to_wire,
    adverts_from_wire,
    ids_from_wire,
    inbox_from_wire,
    reply_to_wire,
)
from datasites.site.audit import Event
from datasites.site.hospital import Hospital
from datasites.site.secure_store import SecureStore

STORE_FILE = "secure.sqlite"
_KEYS = {
    "advertise": frozenset({"round", "phase"}),
    "share": frozenset({"round", "phase", "adverts"}),
    "mask": frozenset({"round", "phase", "shares", "weights"}),
    "unmask": frozenset({"round", "phase", "survivors", "dropped"}),
}
_OPTIONAL = {"mask": frozenset({"edges"})}


class SecureRefusal(ValueError):
    """A phase call that this hospital will not answer; the message carries no secret."""


@dataclass(frozen=True)
class Releases:
    """The plain runtime's charged, recorded releases, which the mask phase masks.

    `train(round, weights)` -> {"weights", "n", "steps"}; `evaluate(after, weights, edges)`
    -> the noised evaluation release; `layout(round, edges)` -> the round's `Layout`.
    """

    train: Callable[[int, dict], dict[str, Any]]
    evaluate: Callable[[int, dict, Any], dict[str, Any]]
    layout: Callable[[int, Any], Layout]


def check_request(request: Any, plan: Plan) -> tuple[int, str]:
    """The call's round and phase, or SecureRefusal naming what is wrong."""
    phase = request.get("phase") if isinstance(request, dict) else None
    if phase not in PHASES:
        raise SecureRefusal(
            f"this study aggregates securely: every call names a phase ({', '.join(PHASES)})."
        )
    allowed = _KEYS[phase] | _OPTIONAL.get(phase, frozenset())
    if not _KEYS[phase] <= set(request) <= allowed:
        raise SecureRefusal(
            f"the {phase} call carries exactly the keys {', '.join(sorted(_KEYS[phase]))}."
        )
    round_ = request["round"]
    if type(round_) is not int or not 1 <= round_ <= plan.rounds + 1:
        raise SecureRefusal(f"round must be an int within this study's rounds 1-{plan.rounds + 1}.")
    return round_, phase


def answer(
    hospital: Hospital,
    plan: Plan,
    signing_key: bytes,
    request: dict[str, Any],
    releases: Releases,
) -> dict[str, Any]:
    """Answer one phase call of a secure study (see the module docstring)."""
    round_, phase = check_request(request, plan)
    party = Party(hospital, plan, round_, SecureStore(hospital.root / STORE_FILE))
    try:
        out = _PHASE[phase](party, signing_key, request, releases)
    except ValueError as error:  # the protocol's and the wire's messages carry no secret
        raise SecureRefusal(str(error)) from None
    hospital.audit.append(
        Event.SECURE_PHASE,
        study=plan.study_id,
        round=round_,
        phase=phase,
        peers=sorted(plan.partners),
        sha256=hashlib.sha256(pickle.dumps(out)).hexdigest(),
    )
    return {"hospital": hospital.name, "round": round_, "phase": phase, **out}


@dataclass(frozen=True)
class Party:
    """This hospital in one round of one secure study."""

    hospital: Hospital
    plan: Plan
    round: int
    store: SecureStore

    @property
    def id(self) -> int:
        return self.plan.party_ids()[self.hospital.name]

    @property
    def parties(self) -> set[int]:
        return set(self.plan.party_ids().values())

    def verify_keys(self) -> dict[int, bytes]:
        ids = self.plan.party_ids()
        return {ids[name]: bytes.fromhex(key) for name, key in self.plan.partners.items()}

    def keys(self) -> tuple[Any, bytes]:
        """This round's key pairs and self-mask seed: drawn once, then always the same."""
        return self.store.put_once(
            self.plan.study_id,
            self.round,
            "keys",
            lambda: (new_round_keys(self.id), secrets.token_bytes(32)),
        )

    def stored(self, phase: str, before: str) -> Any:
        found = self.store.get(self.plan.study_id, self.round, phase)
        if found is None:
            raise SecureRefusal(f"round {self.round} has no {phase} phase yet; call {before}.")
        return found

    def once(self, phase: str, given: Any, make: Callable[[], Any]) -> Any:
        """The phase's stored answer if it was given the same inputs; refused otherwise."""
        stored_given, result = self.store.put_once(
            self.plan.study_id, self.round, phase, lambda: (given, make())
        )
        if stored_given != given:
            raise SecureRefusal(
                f"{self.hospital.name} already answered the {phase} phase of round "
                f"{self.round} for other inputs; it answers each phase once."
            )
        return result


def _advertise(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    keys, _ = party.keys()
    advert = make_advert(party.plan.study_id, party.round, keys, signing_key)
    return {"advert": advert_to_wire(advert)}


def _share(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    plan = party.plan
    adverts = adverts_from_wire(request["adverts"], party.parties)
    verify_adverts(plan.study_id, party.round, adverts, party.verify_keys(), plan.threshold)
    keys, seed = party.keys()
    outbox, own = party.once(
        "share",
        adverts,
        lambda: seal_shares(plan.study_id, party.round, keys, seed, adverts, plan.threshold),
    )
    del own  # kept in the store for the mask phase
    return {"shares": outbox}


def _mask(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    plan = party.plan
    adverts, (_, own) = party.stored("share", "share")
    keys, seed = party.keys()
    inbox = inbox_from_wire(request["shares"], party.parties - {party.id})
    opened = open_shares(plan.study_id, party.round, keys, adverts, inbox, own, plan.threshold)
    # U2, the partners whose shares arrived, is fixed by the first mask call.
    held = party.once("held", sorted(opened), lambda: opened)
    x, public = _vector(party, request, releases)
    masked = mask_update(plan.study_id, party.round, keys, adverts, held, seed, x)
    return {"masked": masked.astype("<u8").tobytes(), "entries": int(masked.size), **public}


def _vector(party: Party, request: dict, releases: Releases) -> tuple[np.ndarray, dict]:
    """The round's vector in the ring, and what of the round is public (noise sd, edges)."""
    plan, round_ = party.plan, party.round
    weights, edges = request["weights"], request.get("edges")
    layout = releases.layout(round_, edges)
    public: dict[str, Any] = {}
    counts = loss_steps = None
    if layout.counts:
        released = releases.evaluate(round_ - 1, weights, edges)
        counts = _counts(released["counts"])
        loss_steps = released["loss_steps"]
        public = {"noise_std": released["noise_std"], "edges": released["edges"]}
    update = n = None
    if layout.weights:
        trained = releases.train(round_, weights)
        n = int(trained["n"])
        update = {
            k: n * (np.asarray(trained["weights"][k], np.float64) - _global(weights, k))
            for k, _ in layout.weights
        }
    quantizer = Quantizer(scale=plan.secure_scale, clip=plan.secure_clip)
    return layout.pack(quantizer, update, n, counts, loss_steps), public


def _global(weights: dict, key: str) -> np.ndarray:
    return np.asarray(weights[key], np.float64)


def _counts(counts: Any) -> dict[str, np.ndarray]:
    if isinstance(counts, dict):
        return {"confusion": counts["confusion"], "ovr": counts["ovr"]}
    return {"histogram": counts}


def _unmask(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    plan = party.plan
    survivors = ids_from_wire(request["survivors"], "survivors", party.parties)
    dropped = ids_from_wire(request["dropped"], "dropped", party.parties)
    _, held = party.stored("held", "mask")
    reply = party.once(
        "unmask",
        (sorted(survivors), sorted(dropped)),
        lambda: unmasking_reply(party.id, held, survivors, dropped, plan.threshold),
    )
    return {"reply": reply_to_wire(reply)}


_PHASE: dict[str, Callable[[Party, bytes, dict, Releases], dict]] = {
    "advertise": _advertise,
    "share": _share,
    "mask": _mask,
    "unmask": _unmask,
}
