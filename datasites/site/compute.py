"""What a study would cost this hospital in compute and traffic, computed before it runs.

Epsilon bounds what a study may learn, not what it may burn: a plan of 500 rounds of 100,000
DP-SGD steps on an 85-million-parameter MLP is private enough and would still occupy the
hospital's server for weeks and move 340 MB of weights each way on every call. `Compute`
states that cost from the plan and the hospital's training rows alone, so the operator sees
it in `show` and the site policy can bound it (`StudyPolicy.compute_violations`), at
approval and again by the runtime on every call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datasites.contract.zoo import count_parameters

if TYPE_CHECKING:
    from datasites.contract.plan import Plan

BYTES_PER_PARAMETER = 4  # weights travel as float32 (datasites.contract.zoo.model_weights)


@dataclass(frozen=True)
class Compute:
    """A study's compute at one hospital.

    `bytes_per_call` is one direction: every call sends the global weights in and returns
    the trained weights out, so twice that crosses the network per call.
    """

    steps_per_round: int  # DP-SGD steps of one round, as the runtime runs and charges them
    total_steps: int  # over all rounds
    evaluations: int  # noised evaluations of the global model (before, every eval_every, last)
    parameters: int  # trainable parameters of the model
    bytes_per_call: int  # weights in one direction of one call

    @classmethod
    def of(cls, plan: Plan, n: int) -> Compute:
        """The compute of `plan` at a hospital with `n` training rows."""
        steps = steps_per_round(plan, n)
        parameters = count_parameters(plan.model, plan.model_kwargs)
        return cls(
            steps_per_round=steps,
            total_steps=steps * plan.rounds,
            evaluations=len(plan.eval_rounds()),
            parameters=parameters,
            bytes_per_call=parameters * BYTES_PER_PARAMETER,
        )

    @property
    def rounds(self) -> int:
        return self.total_steps // self.steps_per_round

    def line(self) -> str:
        """One line for the operator's review."""
        return (
            f"compute here: {self.total_steps:,} DP-SGD steps ({self.steps_per_round:,} per "
            f"round x {self.rounds:,} rounds, {self.evaluations} evaluations), "
            f"{self.parameters:,} parameters, {_size(self.bytes_per_call)} of weights each way "
            "per call"
        )


def steps_per_round(plan: Plan, n: int) -> int:
    """`local_steps`, else `local_epochs * ceil(n / batch)` with the batch capped at n: the
    steps `privacy.budget.study_budget` calibrates for and `dp.dp_train` takes."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of training rows, found {n!r}.")
    batch = min(plan.batch_size, n)
    return plan.local_steps or plan.local_epochs * math.ceil(n / batch)


def _size(size: int) -> str:
    megabytes = size / 1e6
    if megabytes >= 10:
        return f"{megabytes:,.0f} MB"
    if megabytes >= 0.1:
        return f"{megabytes:.1f} MB"
    return f"{size / 1e3:.1f} kB"
