"""The scientist's side of a secure round: relay the hospitals' messages, sum what they mask.

The scientist never holds a key that unmasks one hospital: it forwards signed adverts and
sealed shares it cannot open, collects masked vectors, announces who survived, carries the
survivors' signatures over that announcement to each other (a hospital reveals shares only
for a story at least `threshold` survivors signed), and removes the masks of the sum with
their shares (`datasites.contract.secure_sum`). What it
learns is the sum, over the survivors, of each hospital's size-weighted training update, its
size, and its noised evaluation counts: the weighted FedAvg and the summed metrics of a
plain round, and nothing about any one hospital.

A hospital that fails after the keys are exchanged drops out of the round: if at least
`threshold` remain, the round completes over them. Fewer, and the round stops with one
sentence, nothing unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datasites.contract.encoding import N_CLASSES
from datasites.contract.plan import Plan
from datasites.contract.release import LOSS_BOUND, LOSS_STEPS, check_edges, default_edges
from datasites.contract.secure_sum import Quantizer, recover_sum
from datasites.contract.secure_wire import (
    advert_from_wire,
    masked_from_wire,
    reply_from_wire,
    round_layout,
)

# requests by hospital name -> replies by hospital name (a reply with "error" is a failure)
CallAll = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]


class SecureRoundError(RuntimeError):
    """The round could not complete securely; nothing was unmasked."""


@dataclass
class SecureOutcome:
    """What one secure round revealed: sums over `contributors`, and who dropped (why)."""

    contributors: list[str]
    dropped: dict[str, str]
    average: dict[str, np.ndarray] | None = None  # global + sum(n * update) / sum(n)
    n: int | None = None
    counts: Any = None
    loss_sum: float | None = None
    noise_std: float | None = None
    edges: Any = None
    epsilon: dict[str, dict[str, float]] = field(default_factory=dict)


def run_secure_round(
    call_all: CallAll,
    plan: Plan,
    round_: int,
    weights: dict[str, np.ndarray],
    edges: list | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> SecureOutcome:
    """One call `round_` on its own: its four phases over the plan's partners."""
    return SecureRelay(call_all, plan, last_call=round_, on_phase=on_phase).call(
        round_, weights, edges
    )


class SecureRelay:
    """A secure study's calls, pipelined: three syft calls per hospital and round.

    A call's five phases need four round trips at least (adverts before shares, shares
    before masks, masks before the survivors confirm, confirmations before unmasking), and
    the next round's masks need this round's sum. So the next round's phases ride along
    (`{"batch": [...]}`): the mask call carries the shares of round r + 1, the confirm call
    the adverts of round r + 2. A relay that
    starts (or resumes) at a round without them asks for them first; every hospital gives
    the same answers again, since it answers each phase once.
    `on_phase(name)` is told as each phase begins (a progress bar shows it).
    """

    def __init__(
        self,
        call_all: CallAll,
        plan: Plan,
        last_call: int,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self.call_all, self.plan, self.last = call_all, plan, last_call
        self.on_phase = on_phase
        self.ids = plan.party_ids()
        self.adverts: dict[int, dict[str, Any]] = {}  # round -> hospital -> wire advert
        self.shares: dict[int, dict[str, Any]] = {}  # round -> hospital -> its outbox

    def call(
        self, round_: int, weights: dict[str, np.ndarray], edges: list | None
    ) -> SecureOutcome:
        dropped: dict[str, str] = {}
        if round_ not in self.shares:
            self._prepare(round_, dropped)
        masked = self._mask(round_, weights, edges, dropped)
        confirmed = self._confirm(round_, masked, dropped)
        replies = self._unmask(round_, masked, confirmed, dropped)
        return self._sum(round_, weights, edges, masked, replies, dropped)

    # -- the phases ------------------------------------------------------------------------

    def _prepare(self, round_: int, dropped: dict[str, str]) -> None:
        """Adverts and shares of `round_` when no earlier call brought them."""
        if round_ not in self.adverts:
            batch = [self._advertise(round_)]
            if round_ + 1 <= self.last and round_ + 1 not in self.adverts:
                batch.append(self._advertise(round_ + 1))  # for the next call's shares
            self._phase("advertise", {n: list(batch) for n in self.ids}, dropped)
        self._phase("share", {n: [self._share(round_)] for n in self.adverts[round_]}, dropped)

    def _mask(self, round_: int, weights: dict, edges: list | None, dropped: dict) -> dict:
        shared = self.shares[round_]
        ahead = round_ + 1 in self.adverts and round_ + 1 <= self.last
        requests: dict[str, list[dict]] = {}
        for name in shared:
            inbox = {self.ids[s]: out[self.ids[name]] for s, out in shared.items() if s != name}
            mask = {"round": round_, "phase": "mask", "shares": inbox, "weights": weights}
            if edges is not None:
                mask["edges"] = edges
            requests[name] = [mask]
        if ahead:  # round r + 1's shares ride along, from every hospital that advertised
            for name in self.adverts[round_ + 1]:
                requests.setdefault(name, []).append(self._share(round_ + 1))
        return self._phase("mask", requests, dropped, first_only=set(shared))

    def _confirm(self, round_: int, masked: dict, dropped: dict) -> dict:
        """Every survivor signs the survivor set; round r + 2's adverts ride along."""
        survivors = sorted(self.ids[n] for n in masked)
        confirm = {"round": round_, "phase": "confirm", "survivors": survivors}
        requests: dict[str, list[dict]] = {n: [confirm] for n in masked}
        if round_ + 2 <= self.last:  # every partner may advertise again, also one that dropped
            for name in self.ids:
                requests.setdefault(name, []).append(self._advertise(round_ + 2))
        return self._phase("confirm", requests, dropped, first_only=set(masked))

    def _unmask(self, round_: int, masked: dict, confirmed: dict, dropped: dict) -> dict:
        """Those who confirmed reveal, each given every confirmation (at least t)."""
        unmask = {
            "round": round_,
            "phase": "unmask",
            "survivors": sorted(self.ids[n] for n in masked),
            "dropped": sorted(self.ids[n] for n in self.shares[round_] if n not in masked),
            "signatures": {self.ids[n]: r["signature"] for n, r in confirmed.items()},
        }
        requests = {n: [unmask] for n in confirmed}
        return self._phase("unmask", requests, dropped, first_only=set(confirmed))

    def _advertise(self, round_: int) -> dict:
        return {"round": round_, "phase": "advertise"}

    def _share(self, round_: int) -> dict:
        wire = {self.ids[n]: a for n, a in self.adverts[round_].items()}
        return {"round": round_, "phase": "share", "adverts": wire}

    def _phase(
        self,
        name: str,
        requests: dict[str, list[dict]],
        dropped: dict[str, str],
        first_only: set[str] | None = None,
    ) -> dict[str, dict]:
        """Send each hospital its batch; file every reply by its own round and phase; return
        the replies to the phase `name` (checked against the threshold)."""
        if self.on_phase is not None:
            self.on_phase(name)
        wire = {n: {"batch": batch} for n, batch in requests.items()}
        answers = self.call_all(wire) if wire else {}
        main: dict[str, dict] = {}
        for hospital, answer in answers.items():
            replies = answer.get("batch") if isinstance(answer, dict) else None
            if not isinstance(replies, list) or len(replies) != len(requests[hospital]):
                replies = [answer] * len(requests[hospital])  # the whole call failed
            for request, reply in zip(requests[hospital], replies, strict=True):
                if "error" in reply:
                    if request["phase"] == name:
                        dropped.setdefault(hospital, str(reply["error"]))
                    continue
                self._file(hospital, request, reply, main, name)
        candidates = first_only if first_only is not None else set(requests)
        main = {h: r for h, r in main.items() if h in candidates}
        if len(main) < self.plan.threshold:
            raise SecureRoundError(
                f"round {next(iter(requests.values()))[0]['round']} of study "
                f"{self.plan.study_id}: only {len(main)} hospitals answered, fewer than its "
                f"threshold {self.plan.threshold}; nothing was unmasked ("
                + "; ".join(f"{h}: {why}" for h, why in dropped.items())
                + ")."
            )
        return main

    def _file(self, hospital: str, request: dict, reply: dict, main: dict, name: str) -> None:
        phase, round_ = request["phase"], request["round"]
        if phase == "advertise":
            self.adverts.setdefault(round_, {})[hospital] = reply["advert"]
        elif phase == "share":
            self.shares.setdefault(round_, {})[hospital] = reply["shares"]
        if phase == name:
            main[hospital] = reply

    # -- the sum ---------------------------------------------------------------------------

    def _sum(
        self,
        round_: int,
        weights: dict,
        edges: list | None,
        masked: dict[str, dict],
        replies: dict[str, dict],
        dropped: dict[str, str],
    ) -> SecureOutcome:
        plan, ids = self.plan, self.ids
        layout = round_layout(plan, round_, _edges(plan, edges))
        gone = {ids[n] for n in self.shares[round_] if n not in masked}
        wire = {ids[n]: a for n, a in self.adverts[round_].items()}
        total = recover_sum(
            plan.study_id,
            round_,
            {party: advert_from_wire(a) for party, a in wire.items()},
            {ids[n]: masked_from_wire(r["masked"], layout.length) for n, r in masked.items()},
            gone,
            {ids[n]: reply_from_wire(r["reply"]) for n, r in replies.items()},
            plan.threshold,
        )
        parts = layout.unpack(Quantizer(scale=plan.secure_scale, clip=plan.secure_clip), total)
        outcome = SecureOutcome(sorted(masked), dict(dropped))
        outcome.epsilon = {
            n: {k: r[k] for k in ("epsilon_study", "epsilon_total") if k in r}
            for n, r in masked.items()
        }
        _fill(outcome, parts, weights, masked)
        # What this round needed is spent; keep only what later calls use.
        for store in (self.adverts, self.shares):
            for old in [r for r in store if r <= round_]:
                del store[old]
        return outcome


def _fill(
    outcome: SecureOutcome, parts: dict[str, Any], weights: dict, masked: dict[str, dict]
) -> None:
    if "weighted_update" in parts:
        n = parts["n"]
        outcome.n = n
        outcome.average = {
            k: (np.asarray(weights[k], np.float64) + v / max(n, 1)).astype(np.float32)
            for k, v in parts["weighted_update"].items()
        }
    if "counts" in parts:
        counts = parts["counts"]
        outcome.counts = counts.get("histogram", counts)
        outcome.loss_sum = parts["loss_steps"] * (LOSS_BOUND / LOSS_STEPS)
        first = next(iter(masked.values()))
        # Each hospital's noise sd is public; the sum's is sqrt(k) times one's.
        outcome.noise_std = float(first["noise_std"]) * float(np.sqrt(len(masked)))
        outcome.edges = first["edges"]


def _edges(plan: Plan, edges: list | None) -> np.ndarray:
    kind = "binary" if plan.task == "ehr" else "multiclass"
    if edges is None:
        return default_edges(kind)
    return check_edges(edges, None if kind == "binary" else N_CLASSES)
