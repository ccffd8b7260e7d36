"""What a study would cost this hospital, computed before anyone approves it.

The scientist states a target epsilon; what the hospital loses is decided here: the noise is
calibrated from this hospital's own training rows, and the dataset's total is the PLD
composition (training and test parts in parallel) of everything already spent with every
event the study plans. An operator sees these figures in `show`, and `approve` refuses a
study whose projected total passes the cap, so a study that the runtime would have to stop
half-way is never approved. The projection also carries the study's compute here
(`datasites.site.compute.Compute`), which the site policy bounds because epsilon does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from datasites.privacy.accounting import TEST_PART, TRAIN_PART, parallel_epsilon
from datasites.site.compute import Compute

if TYPE_CHECKING:
    from datasites.contract.plan import Plan
    from datasites.site.hospital import Hospital


# What one "row" is, stated wherever a guarantee is: the epsilon bounds what anyone learns
# about one such unit being added to or removed from the dataset.
PRIVACY_UNITS = {
    "ehr": "one patient (one encounter per patient), added or removed",
    "pathmnist": "one image patch, added or removed; a slide contributes many patches, and "
    "its patches together are not protected as one",
}


@dataclass(frozen=True)
class Projection:
    """A study's cost at one hospital and the dataset's budget around it."""

    dataset: str
    n: int  # training rows the noise is calibrated for
    noise_multiplier: float  # DP-SGD noise the hospital would use
    study_epsilon: float  # what the study costs here, training and evaluation
    spent: float  # the dataset's composed epsilon so far, all studies
    total_after: float  # spent composed with every event the study still plans
    cap: float
    compute: Compute  # DP-SGD steps, evaluations and model size of the study here

    @property
    def remaining_after(self) -> float:
        return self.cap - self.total_after

    @property
    def within_cap(self) -> bool:
        return self.total_after <= self.cap

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "remaining_after": self.remaining_after}

    @property
    def calibrated(self) -> bool:
        """False when the study's compute is beyond the site policy (nothing projected)."""
        return math.isfinite(self.study_epsilon)

    def lines(self) -> list[str]:
        cost = (
            f"projected cost here: epsilon {self.study_epsilon:.3f} (noise multiplier "
            f"{self.noise_multiplier:.3f} for this hospital's {self.n} training rows)"
            if self.calibrated
            else "projected cost here: not calibrated (the study's compute is beyond this "
            "site's policy)"
        )
        return [
            cost,
            f"unit of privacy: {PRIVACY_UNITS.get(self.dataset, 'one row')}",
            f"{self.dataset} spent so far: {self.spent:.3f} of cap {self.cap:g}",
            f"after this study: {self.total_after:.3f}, remaining {self.remaining_after:.3f}"
            + ("" if self.within_cap else "  ABOVE THE CAP"),
            self.compute.line(),
        ]


def project(hospital: Hospital, plan: Plan, n: int) -> Projection:
    """The projection for `plan` at `hospital` with `n` training rows.

    The runtime calibrates from the dataset's released size (a DP count), so that is the n
    used once it exists; before, the projection uses `n` and counts the size's release
    among the events still to come. A study already running here counts only the events
    it has not spent yet.
    """
    from datasites.privacy.budget import study_budget
    from datasites.privacy.ledger import size_event

    ledger = hospital.ledger
    released = ledger.size(plan.dataset)
    n = released if released is not None else n
    compute = Compute.of(plan, n)
    if hospital.policy.study.compute_violations(compute):
        # Not calibrated: the runtime refuses the study before it would, and a plan asking
        # for absurd compute must not hold the operator's `show` in the accountant.
        return Projection(
            dataset=plan.dataset,
            n=n,
            noise_multiplier=math.nan,
            study_epsilon=math.inf,
            spent=ledger.spent(plan.dataset),
            total_after=math.inf,
            cap=ledger.cap(plan.dataset),
            compute=compute,
        )
    budget = study_budget(plan, n)
    planned = budget.parts()
    recorded = ledger.events(study_id=plan.study_id)
    if recorded:
        done = {"train": 0, "eval": 0}
        for _, kind, _, _ in recorded:
            done[kind] += 1
        rounds, evaluations = budget.rounds - done["train"], budget.evaluations - done["eval"]
        planned = {
            TRAIN_PART: [budget.train] * max(0, rounds),
            TEST_PART: [budget.evaluation] * max(0, evaluations),
        }
    if released is None:
        planned[TRAIN_PART] = [size_event(), *planned[TRAIN_PART]]
    spent = ledger.parts(plan.dataset)
    after = {part: spent[part] + planned[part] for part in spent}
    return Projection(
        dataset=plan.dataset,
        n=n,
        noise_multiplier=budget.train.noise_multiplier,
        study_epsilon=budget.total_epsilon(ledger.delta),
        spent=parallel_epsilon(spent, ledger.delta),
        total_after=parallel_epsilon(after, ledger.delta),
        cap=ledger.cap(plan.dataset),
        compute=compute,
    )
