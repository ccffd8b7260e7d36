"""A study's privacy budget at one hospital: the noise its plan gets for the hospital's n.

Training reads the training part and evaluations the test part, which compose in parallel
(`datasites.privacy.accounting`), so each is calibrated to the plan's whole epsilon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasites.privacy.accounting import StudyBudget, calibrate_study

if TYPE_CHECKING:
    from datasites.contract.plan import Plan

# Share of a study's epsilon its evaluation releases may cost. They read the test part,
# which composes in parallel with training, so they take all of it and cost training
# nothing.
EVAL_SHARE = 1.0


def study_budget(plan: Plan, n: int) -> StudyBudget:
    """The events a study will spend at a hospital with n training rows: its noise is
    calibrated so that training (on the training part) and evaluation (on the test part)
    each cost at most the plan's epsilon: in parallel, the study's cost is that epsilon."""
    return calibrate_study(
        epsilon=plan.epsilon,
        delta=plan.delta,
        n=n,
        batch_size=min(plan.batch_size, n),
        local_epochs=plan.local_epochs,
        rounds=plan.rounds,
        evaluations=len(plan.eval_rounds()),
        eval_share=EVAL_SHARE,
        local_steps=plan.local_steps,
    )
