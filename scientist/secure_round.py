"""The scientist's side of a secure round: relay the hospitals' messages, sum what they mask.

The scientist never holds a key that unmasks one hospital: it forwards signed adverts and
sealed shares it cannot open, collects masked vectors, announces who survived, and removes
the masks of the sum with the survivors' shares (`datasites.contract.secure_sum`). What it
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
    """Drive the four phases of call `round_` over the plan's partners; `on_phase(name)`
    is told as each begins (a progress bar shows it)."""
    ids = plan.party_ids()
    dropped: dict[str, str] = {}

    def phase(requests: dict[str, dict]) -> dict[str, dict]:
        if on_phase is not None and requests:
            on_phase(next(iter(requests.values()))["phase"])
        replies = call_all(requests) if requests else {}
        for name, reply in replies.items():
            if "error" in reply:
                dropped.setdefault(name, str(reply["error"]))
        ok = {n: r for n, r in replies.items() if "error" not in r}
        if len(ok) < plan.threshold:
            raise SecureRoundError(
                f"round {round_} of study {plan.study_id}: only {len(ok)} hospitals answered, "
                f"fewer than its threshold {plan.threshold}; nothing was unmasked ("
                + "; ".join(f"{n}: {why}" for n, why in dropped.items())
                + ")."
            )
        return ok

    base = {"round": round_}
    adverts = phase({n: {**base, "phase": "advertise"} for n in ids})
    wire = {ids[n]: r["advert"] for n, r in adverts.items()}
    shared = phase({n: {**base, "phase": "share", "adverts": wire} for n in adverts})
    mask_requests = {}
    for name in shared:
        inbox = {ids[s]: r["shares"][ids[name]] for s, r in shared.items() if s != name}
        mask_requests[name] = {**base, "phase": "mask", "shares": inbox, "weights": weights}
        if edges is not None:
            mask_requests[name]["edges"] = edges
    masked = phase(mask_requests)
    survivors = sorted(ids[n] for n in masked)
    gone = sorted(ids[n] for n in shared if n not in masked)
    unmask = {"phase": "unmask", "survivors": survivors, "dropped": gone}
    replies = phase({n: {**base, **unmask} for n in masked})
    edges_array = _edges(plan, edges)
    layout = round_layout(plan, round_, edges_array)
    total = recover_sum(
        plan.study_id,
        round_,
        {party: advert_from_wire(a) for party, a in wire.items()},
        {ids[n]: masked_from_wire(r["masked"], layout.length) for n, r in masked.items()},
        set(gone),
        {ids[n]: reply_from_wire(r["reply"]) for n, r in replies.items()},
        plan.threshold,
    )
    parts = layout.unpack(Quantizer(scale=plan.secure_scale, clip=plan.secure_clip), total)
    outcome = SecureOutcome(sorted(masked), {n: why for n, why in dropped.items()})
    outcome.epsilon = {
        n: {k: r[k] for k in ("epsilon_study", "epsilon_total") if k in r}
        for n, r in masked.items()
    }
    _fill(outcome, parts, weights, masked)
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
