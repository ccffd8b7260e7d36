"""Which federated EHR recipe holds across the family of populations? An in-process replica.

A full-scale `benchmarks/utility.py` run launches five datasites and takes minutes per
configuration; choosing a recipe needs hundreds of runs. This replica runs the hospitals' own
code in one process, on the same data a launch would hold:

- each hospital of a `synthetic.populations` member: its training view (one encounter per
  patient), its keyed patient-disjoint train/test split (`datasites.server.assets`), encoded by
  `datasites.contract.encoding`;
- the hospital's noise from `datasites.privacy.budget.study_budget` for the study's plan at its
  own n (the runtime uses its released, noised n; the replica the exact one, which moves sigma
  by far less than a percent at these sizes);
- a round: every hospital runs `datasites.privacy.dp.dp_train` from the global weights, with
  fresh OS-seeded noise; the scientist's `scientist.fedavg.fedavgm` averages them by n;
- the score: the exact AUROC of the final model on the union of the hospitals' test splits,
  and the gap to the strongest centralized non-private logistic model on the same split.

What it leaves out: syft, the ledger, the noised evaluations (they read the test part and cost
training nothing). `benchmarks/utility.py` is the end-to-end check of a chosen recipe.

    python benchmarks/recipes.py [--populations default,weak,...] [--recipes current,...]
        [--draws 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, replace

import ehr_difficulty
import numpy as np
import torch
from scoring import auroc

from datasites.contract.ehr_reference import load as load_reference
from datasites.contract.encoding import FEATURE_NAMES, encode_ehr
from datasites.contract.plan import Plan
from datasites.contract.zoo import build_model, load_weights
from datasites.privacy.budget import study_budget
from datasites.privacy.dp import TrainSpec, dp_train
from datasites.server.assets import EHR_TEST_FRACTION, ehr_training_view
from scientist.config import DPConfig, StudyConfig
from scientist.fedavg import fedavgm, weight_average
from synthetic.partition import split_train_test_patients
from synthetic.populations import POPULATIONS, Population

EPSILON = 1.0
TARGET_GAP = 0.02
# The intercept of a 9% readmission rate: the published prevalence, no hospital's data.
PRIOR = -2.31


@dataclass(frozen=True)
class Hospital:
    name: str
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def hospitals(population: Population, seed: int) -> list[Hospital]:
    """The encoded train and test splits each hospital of `population` would hold."""
    out = []
    for index, table in enumerate(population.hospitals(seed)):
        key = f"recipes-{population.name}-{seed}-{index}".encode().ljust(16, b"-")
        train, test = split_train_test_patients(table, EHR_TEST_FRACTION, key)
        out.append(
            Hospital(
                name=f"hospital-{index}",
                train=encode_ehr(ehr_training_view(train)),
                test=encode_ehr(ehr_training_view(test)),
            )
        )
    return out


def federated(
    config: StudyConfig,
    sites: list[Hospital],
    prior: float | None = None,
    clip_quantile: float = 0.0,
    noise: bool = True,
) -> torch.nn.Module:
    """The study `config` run over `sites`, as the runtime and the scientist would.
    `prior`: start the logistic model at zero weights and this intercept (a public prior)."""
    plan = Plan.from_dict(config.plan("replica", "replica@example.org"))
    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_kwargs)
    if prior is not None:
        with torch.no_grad():
            model[0].weight.zero_()
            model[0].bias.fill_(prior)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    specs = []
    for site in sites:
        n = len(site.train[1])
        budget = study_budget(plan, n)
        steps = budget.train.steps
        specs.append(
            TrainSpec(
                batch_size=min(plan.batch_size, n),
                lr=plan.lr,
                local_epochs=plan.local_epochs,
                max_grad_norm=plan.max_grad_norm,
                noise_multiplier=budget.train.noise_multiplier if noise else 0.0,
                momentum=plan.momentum,
                local_steps=steps,
                population=n,
                clip_quantile=clip_quantile,
            )
        )
    buffer: dict[str, np.ndarray] = {}
    average: dict[str, np.ndarray] | None = None
    for _ in range(plan.rounds):
        updates = []
        for site, spec in zip(sites, specs, strict=True):
            local = copy.deepcopy(model)
            load_weights(local, weights)
            outcome = dp_train(local, *site.train, spec, task="ehr")
            updates.append((outcome.weights, outcome.samples))
        weights, buffer = fedavgm(
            weights,
            updates,
            buffer,
            server_lr=config.server_lr,
            server_momentum=config.server_momentum,
        )
        if config.average_decay:
            average = weight_average(average, weights, config.average_decay)
    load_weights(model, average if average is not None else weights)
    return model.eval()


def score(model: torch.nn.Module, test: tuple[np.ndarray, np.ndarray]) -> float:
    with torch.no_grad():
        scores = model(torch.from_numpy(test[0])).reshape(-1).numpy()
    return auroc(scores, test[1])


def pooled(sites: list[Hospital], part: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [getattr(s, part) for s in sites]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# Every setting named, so that a change of the default recipe (scientist.recipes) does not
# change what these candidates measured.
_BASE = StudyConfig(
    task="ehr",
    model="ehr_logistic",
    model_kwargs={},
    rounds=10,
    local_epochs=1,
    local_steps=0,
    batch_size=512,
    lr=0.5,
    momentum=0.0,
    server_lr=1.0,
    server_momentum=0.0,
    average_decay=0.0,
    clip_quantile=0.0,
    dp=DPConfig(epsilon=EPSILON),
    aggregation="plain",  # the replica sums in the clear; secure sums are equal (issue 15)
)
# Candidates, named. `current` is the README recipe that lost 0.07 on the real extract.
RECIPES: dict[str, StudyConfig] = {
    "current": replace(_BASE, rounds=10, batch_size=512, lr=0.5),
    "mlp_default": replace(_BASE, model="ehr_mlp", rounds=10, batch_size=256, lr=0.5),
    "local5": replace(_BASE, rounds=10, local_epochs=5, batch_size=512, lr=0.5),
    "local5_r20": replace(_BASE, rounds=20, local_epochs=5, batch_size=512, lr=0.5),
    "b1024_lr1": replace(_BASE, rounds=20, local_epochs=5, batch_size=1024, lr=1.0),
    "b2048_lr2": replace(_BASE, rounds=20, local_epochs=5, batch_size=2048, lr=2.0),
    "b1024_lr2_m": replace(_BASE, rounds=20, local_epochs=5, batch_size=1024, lr=1.0, momentum=0.5),
    "local10_r20": replace(_BASE, rounds=20, local_epochs=10, batch_size=1024, lr=1.0),
    "local5_r5": replace(_BASE, rounds=5, local_epochs=5, batch_size=512, lr=0.5),
    "local10_r5": replace(_BASE, rounds=5, local_epochs=10, batch_size=512, lr=0.5),
    "local10": replace(_BASE, rounds=10, local_epochs=10, batch_size=512, lr=0.5),
    "local5_lr1": replace(_BASE, rounds=10, local_epochs=5, batch_size=512, lr=1.0),
    "local5_b1024": replace(_BASE, rounds=10, local_epochs=5, batch_size=1024, lr=1.0),
    "local5_m5": replace(_BASE, rounds=10, local_epochs=5, batch_size=512, lr=0.5, momentum=0.5),
    "local5_r5_lr1": replace(_BASE, rounds=5, local_epochs=5, batch_size=512, lr=1.0),
    "local10_r3": replace(_BASE, rounds=3, local_epochs=10, batch_size=512, lr=0.5),
    "local5_avg9": replace(_BASE, rounds=10, local_epochs=5, average_decay=0.9),
    "local5_avg7": replace(_BASE, rounds=10, local_epochs=5, batch_size=512, average_decay=0.7),
    "r20_l3_avg8": replace(_BASE, rounds=20, local_epochs=3, batch_size=512, average_decay=0.8),
    "r20_l5_avg8": replace(_BASE, rounds=20, local_epochs=5, batch_size=512, average_decay=0.8),
    "r30_l3_avg9": replace(_BASE, rounds=30, local_epochs=3, batch_size=512, average_decay=0.9),
    "r40_l3_avg9": replace(_BASE, rounds=40, local_epochs=3, batch_size=512, average_decay=0.9),
    "r50_l2_avg95": replace(_BASE, rounds=50, local_epochs=2, batch_size=512, average_decay=0.95),
    "r30_l3_b1024_avg9": replace(
        _BASE, rounds=30, local_epochs=3, batch_size=1024, lr=1.0, average_decay=0.9
    ),
    "r20_l5_lr1_avg8": replace(
        _BASE, rounds=20, local_epochs=5, batch_size=512, lr=1.0, average_decay=0.8
    ),
    # What `StudyConfig(task="ehr")` runs (scientist.recipes), summed in the clear.
    "recipe": StudyConfig(task="ehr", aggregation="plain"),
}


def rare_factor(floor: float) -> np.ndarray:
    """`+f<floor>`: each standardized feature times scale / max(scale, floor), with the
    public reference's scales: a rare one-hot is inflated to at most 1 / floor instead of
    1 / SCALE_FLOOR (a public rule; 0 leaves the features as they are)."""
    scales = load_reference(FEATURE_NAMES).scale
    return scales / np.maximum(scales, floor) if floor else np.ones_like(scales)


def dropped(below: float) -> np.ndarray:
    """`+d<scale>`: 0 for each feature whose public reference scale is under `below` (the
    rarest one-hots, merged into their block's baseline by a public rule), 1 for the rest."""
    scales = load_reference(FEATURE_NAMES).scale
    return (scales >= below).astype(np.float32)


# `+r<rounds>`, `+e<local epochs>`, `+b<batch>`, `+lr<rate>`, `+a<average decay>`: one
# setting of the base recipe changed.
_OVERRIDES = {
    "lr": ("lr", float),
    "r": ("rounds", int),
    "e": ("local_epochs", int),
    "b": ("batch_size", int),
    "a": ("average_decay", float),
}


def overrides(extras: list[str]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for extra in extras:
        for prefix, (field, kind) in _OVERRIDES.items():
            if extra.startswith(prefix) and extra[len(prefix) :][:1].isdigit():
                out[field] = kind(extra[len(prefix) :])
                break
    return out


@dataclass(frozen=True)
class Variant:
    """One named recipe with its extras applied: what `federated` runs and `score` reads."""

    config: StudyConfig
    sites: list[Hospital]
    test: tuple[np.ndarray, np.ndarray]
    prior: float | None
    quantile: float
    noise: bool


def variant(recipe: str, sites: list[Hospital], test: tuple[np.ndarray, np.ndarray]) -> Variant:
    """`base+extra+...`: a RECIPES entry, then each extra (see the module's README section)."""
    base, *extras = recipe.split("+")

    def number(prefix: str) -> float:
        return next((float(e[len(prefix) :]) for e in extras if e.startswith(prefix)), 0.0)

    # `+centred` is an oracle: the exact pooled train mean, which no release gives.
    train = pooled(sites, "train")[0]
    centre = train.mean(axis=0) if "centred" in extras else np.zeros(train.shape[1], np.float32)
    factor = rare_factor(number("f")) * dropped(number("d"))

    def moved(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return (part[0] - centre) * factor, part[1]

    config = replace(RECIPES[base], **overrides(extras))
    kwargs = dict(config.model_kwargs)
    if number("k"):  # `+k<scale>`: the logistic model's intercept input
        kwargs["intercept_scale"] = number("k")
    if number("u"):  # `+u<norm>`: the logistic model scales every row to this L2 norm
        kwargs["row_norm"] = number("u")
    return Variant(
        config=replace(config, model_kwargs=kwargs),
        sites=[Hospital(s.name, moved(s.train), moved(s.test)) for s in sites],
        test=moved(test),
        prior=PRIOR if "prior" in extras else None,
        quantile=number("q"),
        noise="nonoise" not in extras,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", default="default")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--draws", type=int, default=1, help="noise draws per recipe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = list(POPULATIONS) if args.populations == "all" else args.populations.split(",")
    print(
        f"{'population':<14} {'recipe':<22} central  {'federated AUROC, each draw':<28} "
        "gap    s/run"
    )
    for name in names:
        sites = hospitals(POPULATIONS[name], args.seed)
        train, test = pooled(sites, "train"), pooled(sites, "test")
        central = ehr_difficulty.centralized_auroc(train, test)
        for recipe in args.recipes.split(","):
            draws, start = [], time.perf_counter()
            run = variant(recipe, sites, test)
            for _ in range(args.draws):
                model = federated(run.config, run.sites, run.prior, run.quantile, run.noise)
                draws.append(score(model, run.test))
            seconds = (time.perf_counter() - start) / args.draws
            gap = central - float(np.mean(draws))
            shown = " ".join(f"{d:.3f}" for d in draws)
            mark = "ok" if gap <= TARGET_GAP else "--"
            row = f"{name:<14} {recipe:<22} {central:.3f}    {shown:<28} {gap:+.3f} {mark}"
            print(f"{row} {seconds:5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
