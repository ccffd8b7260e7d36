"""Secure aggregation inside the hospital: the five phases of a round, each answered once.

A secure study (`Plan.aggregation == "secure"`) releases nothing the scientist can read on
its own. A round r is five calls, relayed by the scientist between the plan's partners
(`datasites.contract.secure_sum` has the protocol, `datasites.contract.secure_wire` the
messages):

- advertise: this round's two public keys, signed with the datasite's own signing key;
- share: given every partner's advert (each verified against the plan's partner keys), the
  shares of this hospital's self-mask seed and mask key, sealed to each partner;
- mask: given the shares sealed to it and the global weights, it evaluates and trains as a
  plain study would (the same ledger charges, the same recorded releases), then returns
  only the masked vector: its training update weighted by its released size, that size, and
  the evaluation's noised counts and loss, in the ring;
- confirm: given the survivors, its signature over (survivors, the partners whose shares it
  holds): the consistency round of Bonawitz et al. against a relay that lies;
- unmask: given the same survivors and t signatures over the same story, the shares that
  remove the masks of the sum, never both of one partner's secrets.

Every answer is stored with a digest of its inputs before it leaves
(`datasites.site.phase_store`): a repeat with the same inputs gets the stored answer, any
other input is refused (and so audited), and nothing is recomputed from a repeated request.
A round's secret keys and held shares are erased once the round is over.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datasites.contract.plan import Plan
from datasites.contract.secure_sum import (
    Quantizer,
    check_confirmations,
    check_story,
    confirmation_message,
    make_advert,
    mask_update,
    new_round_keys,
    open_shares,
    seal_shares,
    sign,
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
    signatures_from_wire,
)
from datasites.contract.stored import dumps
from datasites.site.audit import Event
from datasites.site.hospital import Hospital
from datasites.site.phase_store import PhaseStore

STORE_FILE = "secure.sqlite"
_KEYS = {
    "advertise": frozenset({"round", "phase"}),
    "share": frozenset({"round", "phase", "adverts"}),
    "mask": frozenset({"round", "phase", "shares", "weights"}),
    "confirm": frozenset({"round", "phase", "survivors"}),
    "unmask": frozenset({"round", "phase", "survivors", "dropped", "signatures"}),
}
_OPTIONAL = {"mask": frozenset({"edges"})}
# What a finished round's store keeps: public answers (for repeats), never a secret.
_SECRETS = ("keys", "own", "held")
# A round's secrets go at its end, or this long after they were drawn if its end never came.
SECRETS_TTL_S = 24 * 3600.0
# Kept: the digest of the weights and edges the mask phase was given, which confirm signs.
_INPUTS = "inputs"


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
    store = PhaseStore(hospital.root / STORE_FILE)
    store.expire(_SECRETS, SECRETS_TTL_S)
    party = Party(hospital, plan, round_, store)
    try:
        out = _PHASE[phase](party, signing_key, request, releases)
    except ValueError as error:  # the protocol's and the wire's messages carry no secret
        raise SecureRefusal(str(error)) from None
    store.sync()  # what this answer was made from is on disk before it leaves
    fields = {"study": plan.study_id, "round": round_, "phase": phase}
    if party.repeated:
        hospital.audit.append(
            Event.REPEAT_SERVED, **fields, note="the stored answer was returned; nothing new left"
        )
    else:
        hospital.audit.append(
            Event.SECURE_PHASE,
            **fields,
            peers=sorted(plan.partners),
            sha256=hashlib.sha256(dumps(out)).hexdigest(),
        )
    return {"hospital": hospital.name, "round": round_, "phase": phase, **out}


@dataclass
class Party:
    """This hospital in one round of one secure study."""

    hospital: Hospital
    plan: Plan
    round: int
    store: PhaseStore
    repeated: bool = field(default=False)
    """Whether the call's phase was answered from the store (a repeat with the same inputs)."""

    @property
    def study(self) -> tuple[str, str]:
        """The store's key for this study: (owner, study id). The runtime has checked that
        the plan's scientist is the account the call runs for."""
        return (self.plan.scientist, self.plan.study_id)

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
            self.study,
            self.round,
            "keys",
            lambda: (new_round_keys(self.id), secrets.token_bytes(32)),
        )

    def stored(self, phase: str, before: str) -> Any:
        """What `phase` stored this round (a secret, or an answer without its digest)."""
        found = self.store.get(self.study, self.round, phase)
        if found is None:
            raise SecureRefusal(
                f"{self.hospital.name} holds no {phase} state for round {self.round} (the "
                f"round is over, or {before} was not called first)."
            )
        return found[1] if phase in _ANSWERS else found

    def once(self, phase: str, given: Any, make: Callable[[], Any]) -> Any:
        """The phase's stored answer if it was given the same inputs; refused otherwise.

        The answer is made outside the store's lock (training takes seconds); two calls
        that race both compute, the first stored wins, and the loser is refused unless its
        inputs were the same."""
        digest = inputs_digest(given)
        found = self.store.get(self.study, self.round, phase)
        fresh = False
        if found is None:
            made = make()
            found, fresh = self.store.first(self.study, self.round, phase, lambda: (digest, made))
        if found[0] != digest:
            raise SecureRefusal(
                f"{self.hospital.name} already answered the {phase} phase of round "
                f"{self.round} for other inputs; it answers each phase once."
            )
        self.repeated = not fresh
        return found[1]

    def erase_secrets(self, through: int) -> None:
        """Forward secrecy: rounds up to `through` are over; their keys and shares go."""
        if through >= 1:
            self.store.erase(self.study, through, _SECRETS)


_MAX_DEPTH = 8


def inputs_digest(value: Any) -> str:
    """SHA-256 of a phase's inputs in a canonical, typed encoding: equal inputs give equal
    digests across calls and processes; anything but plain data (nested at most a few
    levels) is refused, so a hostile request cannot make the digest itself misbehave."""
    digest = hashlib.sha256()
    _feed(digest, value, 0)
    return digest.hexdigest()


def _feed(digest: Any, value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("a phase's inputs are nested too deeply.")

    def tag(kind: bytes, payload: bytes = b"") -> None:
        digest.update(kind + len(payload).to_bytes(8, "big") + payload)

    if value is None or isinstance(value, bool):
        tag(b"c", repr(value).encode())
    elif isinstance(value, int | float | str | np.integer | np.floating):
        tag(type(value).__name__.encode()[:16].ljust(16), repr(value).encode())
    elif isinstance(value, bytes):
        tag(b"b", value)
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError("a phase's arrays must be numeric.")
        tag(b"a", f"{value.dtype.str}{value.shape}".encode())
        tag(b"d", np.ascontiguousarray(value).tobytes())
    elif isinstance(value, list | tuple):
        tag(b"l", str(len(value)).encode())
        for item in value:
            _feed(digest, item, depth + 1)
    elif isinstance(value, dict):
        tag(b"m", str(len(value)).encode())
        for key in sorted(value, key=repr):
            _feed(digest, key, depth + 1)
            _feed(digest, value[key], depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        tag(b"o", type(value).__name__.encode())
        _feed(digest, [getattr(value, f) for f in value.__dataclass_fields__], depth + 1)
    else:
        raise ValueError("a phase's inputs must be plain data (dicts, lists, numbers, arrays).")


_ANSWERS = ("advertise", "adverts", "share", "mask", "confirm", "unmask")


def _advertise(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    def make() -> dict:
        keys, _ = party.keys()
        return advert_to_wire(make_advert(party.plan.study_id, party.round, keys, signing_key))

    return {"advert": party.once("advertise", None, make)}


def _share(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    plan = party.plan
    adverts = adverts_from_wire(request["adverts"], party.parties)
    verify_adverts(plan.study_id, party.round, adverts, party.verify_keys(), plan.threshold)

    made: dict[str, Any] = {}

    def make() -> dict:
        keys, seed = party.keys()
        outbox, made["own"] = seal_shares(
            plan.study_id, party.round, keys, seed, adverts, plan.threshold
        )
        return outbox

    outbox = party.once("share", adverts, make)
    if not party.repeated:  # this call's shares are the stored ones: keep its own pair
        party.store.put_once(party.study, party.round, "own", lambda: made["own"])
        party.once("adverts", adverts, lambda: adverts)
        party.repeated = False
    return {"shares": outbox}


def _mask(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    """The masked vector, computed once for one (inbox, weights, edges); the previous
    round's secrets go, since a relay that sends round r's weights has finished round r - 1."""
    plan = party.plan
    inbox = inbox_from_wire(request["shares"], party.parties - {party.id})
    given = (inbox, request["weights"], request.get("edges"))

    def make() -> dict:
        adverts = party.stored("adverts", "share")
        own = party.stored("own", "share")
        keys, seed = party.keys()
        opened = open_shares(plan.study_id, party.round, keys, adverts, inbox, own, plan.threshold)
        held = party.store.put_once(party.study, party.round, "held", lambda: opened)
        x, public = _vector(party, request, releases)
        masked = mask_update(plan.study_id, party.round, keys, adverts, held, seed, x)
        return {"masked": masked.astype("<u8").tobytes(), "entries": int(masked.size), **public}

    out = party.once("mask", given, make)
    if not party.repeated:  # this call's vector is the stored one: keep what it came from
        inputs = bytes.fromhex(inputs_digest((request["weights"], request.get("edges"))))
        party.store.put_once(party.study, party.round, _INPUTS, lambda: inputs)
    party.erase_secrets(party.round - 1)
    return out


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


def _confirm(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    """Sign the one survivor story this hospital will ever reveal shares for this round."""
    plan = party.plan
    survivors = ids_from_wire(request["survivors"], "survivors", party.parties)

    def make() -> dict:
        held = set(party.stored("held", "mask"))
        inputs = party.stored(_INPUTS, "mask")
        check_story(party.id, survivors, held, plan.threshold)
        message = confirmation_message(plan.study_id, party.round, survivors, held, inputs)
        return {
            "signature": sign(signing_key, message),
            "survivors": sorted(survivors),
            "held": sorted(held),
            "inputs": inputs,
        }

    confirmed = party.once("confirm", sorted(survivors), make)
    return {"signature": confirmed["signature"], "held": confirmed["held"]}


def _unmask(party: Party, signing_key: bytes, request: dict, releases: Releases) -> dict:
    plan = party.plan
    survivors = ids_from_wire(request["survivors"], "survivors", party.parties)
    dropped = ids_from_wire(request["dropped"], "dropped", party.parties)
    signatures = signatures_from_wire(request["signatures"], party.parties)

    def make() -> dict:
        confirmed = party.stored("confirm", "confirm")
        held_ids = set(confirmed["held"])
        if confirmed["survivors"] != sorted(survivors) or dropped != held_ids - survivors:
            raise SecureRefusal(
                f"{party.hospital.name} confirmed another survivor set for round "
                f"{party.round}; it reveals shares only for the set it signed."
            )
        check_confirmations(
            plan.study_id,
            party.round,
            survivors,
            held_ids,
            confirmed["inputs"],
            signatures,
            party.verify_keys(),
            plan.threshold,
        )
        held = party.stored("held", "mask")
        return reply_to_wire(unmasking_reply(party.id, held, survivors, dropped, plan.threshold))

    reply = party.once("unmask", (sorted(survivors), sorted(dropped)), make)
    party.erase_secrets(party.round)
    return {"reply": reply}


_PHASE: dict[str, Callable[[Party, bytes, dict, Releases], dict]] = {
    "advertise": _advertise,
    "share": _share,
    "mask": _mask,
    "confirm": _confirm,
    "unmask": _unmask,
}
