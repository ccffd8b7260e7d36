"""The privacy claims of local DP-SGD, each checked against an obviously correct reference.

Fast per-example gradients are only worth having if they are exactly the per-example
gradients: the references here are batch-size-1 microbatching and Opacus' GradSampleModule;
the noise is measured against its formula; Poisson sampling against its binomial law.
"""

from __future__ import annotations

import copy
import ctypes.util
import math
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn

from datasites.contract.encoding import N_FEATURES, encode_ehr
from datasites.contract.release import LOSS_BOUND
from datasites.contract.zoo import build_model, model_weights
from datasites.privacy.dp import (
    TrainOutcome,
    TrainSpec,
    clipped_gradient_sum,
    count_noise,
    dp_train,
    gradient_noise_multiplier,
    keep_freed_memory,
    steps_per_epoch,
)
from datasites.privacy.sampling import batch_bound
from synthetic.ehr import generate_ehr

torch.set_num_threads(1)

CASES = {
    "ehr_logistic": ("ehr", (N_FEATURES,)),
    "ehr_mlp": ("ehr", (N_FEATURES,)),
    "pathmnist_cnn": ("pathmnist", (3, 28, 28)),
}


def _data(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    task, shape = CASES[name]
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, *shape)).astype(np.float32)
    if task == "ehr":
        return features, rng.integers(0, 2, n).astype(np.float32)
    return features, rng.integers(0, 9, n).astype(np.int64)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name)


def _loss(output: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    if task == "ehr":
        return F.binary_cross_entropy_with_logits(output[:, 0], targets)
    return F.cross_entropy(output, targets)


def _key(seed: int) -> bytes:
    """A fixed ChaCha20 key for a reproducible run (refused outside pytest)."""
    return seed.to_bytes(32, "little")


def _spec(**overrides: float) -> TrainSpec:
    values = dict(batch_size=8, lr=1.0, local_epochs=1, max_grad_norm=1.0, noise_multiplier=0.0)
    return TrainSpec(**(values | overrides))


def _microbatch_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, bound: float
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One example at a time: its own backward pass, clipped by hand, then summed."""
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    norms = []
    for i in range(x.shape[0]):
        model.zero_grad()
        _loss(model(x[i : i + 1]), y[i : i + 1], task).backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
        norms.append(norm)
        for name, grad in grads.items():
            total[name] += min(1.0, bound / (norm + 1e-6)) * grad
    return total, norms


# --- (a) without noise and clipping, one full-batch DP step is one SGD step ------------------


@pytest.mark.parametrize("name", list(CASES))
def test_noise_free_unclipped_full_batch_step_equals_plain_sgd(name: str) -> None:
    # Prepare
    task, _ = CASES[name]
    features, labels = _data(name, 12)
    private, plain = _model(name), _model(name)
    spec = _spec(batch_size=12, lr=0.3, max_grad_norm=1e6, noise_multiplier=0.0)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.3)
    # Execute
    outcome = dp_train(private, features, labels, spec, task=task, test_key=_key(1))
    loss = _loss(plain(torch.from_numpy(features)), torch.from_numpy(labels), task)
    loss.backward()
    optimizer.step()
    # Assert
    assert outcome.steps == 1
    assert outcome.loss == pytest.approx(loss.item(), rel=1e-5)
    expected = model_weights(plain)
    for key, value in outcome.weights.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", ["ehr_mlp", "pathmnist_cnn"])
def test_noise_free_unclipped_momentum_steps_equal_hand_rolled_heavy_ball(name: str) -> None:
    # Prepare: q = 1, so each of the 4 steps (4 epochs) is a full-batch gradient step
    task, _ = CASES[name]
    features, labels = _data(name, 12, seed=4)
    private, plain = _model(name), _model(name)
    lr, momentum = 0.2, 0.9
    spec = _spec(batch_size=12, lr=lr, local_epochs=4, max_grad_norm=1e6, momentum=momentum)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    # Execute
    outcome = dp_train(private, features, labels, spec, task=task, test_key=_key(1))
    velocity = {n: torch.zeros_like(p) for n, p in plain.named_parameters()}
    for _ in range(4):  # v <- momentum * v + g; w <- w - lr * v
        plain.zero_grad()
        _loss(plain(x), y, task).backward()
        with torch.no_grad():
            for n, p in plain.named_parameters():
                velocity[n].mul_(momentum).add_(p.grad)
                p.sub_(lr * velocity[n])
    # Assert
    assert outcome.steps == 4
    expected = model_weights(plain)
    for key, value in outcome.weights.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


# --- (b) per-example clipping is exact --------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_clipped_sum_equals_microbatch_reference(name: str) -> None:
    # Prepare: a bound at the median norm, so that some examples are clipped and some not
    task, _ = CASES[name]
    model = _model(name)
    x, y = (torch.from_numpy(a) for a in _data(name, 16, seed=2))
    _, norms = _microbatch_reference(model, x, y, task, bound=1e9)
    bound = float(np.median(norms))
    reference, _ = _microbatch_reference(model, x, y, task, bound)
    # Execute
    sums, loss_sum = clipped_gradient_sum(model, x, y, task=task, max_grad_norm=bound)
    # Assert
    assert min(norms) < bound < max(norms)
    assert set(sums) == set(reference)
    for key, value in sums.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)
    assert loss_sum == pytest.approx(16 * _loss(model(x), y, task).item(), rel=1e-5)


class _Branching(nn.Module):
    """Two recorded layers that depend on no other (two sources for the backward pass), a
    residual that sums two gradients into one recorded output, GroupNorm on (B, C) and on
    images with only its bias trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.norm.weight.requires_grad_(False)
        self.mix = nn.Linear(4 * 6 * 6, 8)
        self.flat_norm = nn.GroupNorm(4, 8)
        self.head = nn.Linear(8, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = self.norm(self.left(x)).relu() + self.right(x)
        hidden = self.mix(F.max_pool2d(images, 2).flatten(1))
        return self.head(self.flat_norm(hidden).relu() + hidden)


def test_clipped_sum_is_exact_on_branches_residuals_and_frozen_group_norm_weights() -> None:
    torch.manual_seed(3)
    model = _Branching()
    x, y = torch.randn(12, 3, 12, 12), torch.randint(0, 9, (12,))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    examples = [
        torch.autograd.grad(
            F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(trainable.values())
        )
        for i in range(12)
    ]
    norms = [math.sqrt(sum(float(g.square().sum()) for g in grads)) for grads in examples]
    bound = float(np.median(norms))
    total = {name: torch.zeros_like(p) for name, p in trainable.items()}
    for grads, norm in zip(examples, norms, strict=True):
        for name, grad in zip(trainable, grads, strict=True):
            total[name] += min(1.0, bound / (norm + 1e-6)) * grad
    # Execute
    sums, _ = clipped_gradient_sum(model, x, y, task="pathmnist", max_grad_norm=bound)
    # Assert: the frozen GroupNorm weight has no sum; every trainable one is exact
    assert min(norms) < bound < max(norms)
    assert set(sums) == set(trainable) and "norm.weight" not in sums
    for name, value in sums.items():  # sums of order 1: float rounding of batch vs one
        torch.testing.assert_close(value, total[name], rtol=1e-4, atol=1e-4)


def test_max_pooling_run_channels_last_in_the_dp_pass_gives_the_same_gradients() -> None:
    """The DP pass pools on channels-last copies (and scatters the gradient with their
    indices in the usual layout): with windows that overlap, pad and round up, and inputs
    full of ties (ReLU zeros, coarse values), the clipped sum is still the microbatch
    reference's, and the scientist's modules are left without hooks or patched forwards."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 9),
    )
    x = torch.randint(-2, 3, (10, 3, 13, 13)).float()
    y = torch.randint(0, 9, (10,))
    _, norms = _microbatch_reference(model, x, y, "pathmnist", bound=1e9)
    bound = float(np.median(norms))
    reference, _ = _microbatch_reference(model, x, y, "pathmnist", bound)
    # Execute
    sums, _ = clipped_gradient_sum(model, x, y, task="pathmnist", max_grad_norm=bound)
    # Assert
    for name, value in sums.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model)
    assert all("forward" not in vars(m) for m in model)  # the DP pass's functions are gone


def test_a_group_norm_that_depends_on_no_other_layer_is_exact_too() -> None:
    """GroupNorm layers leave their per-example gradients from their own backward, unless
    the pass stops at their output (a source: no recorded layer before it); then the output
    gradient is used. Both against the microbatch reference, on inputs with ties."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.GroupNorm(3, 3),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 9),
    )
    x = torch.randint(-2, 3, (10, 3, 7, 7)).float()
    y = torch.randint(0, 9, (10,))
    _, norms = _microbatch_reference(model, x, y, "pathmnist", bound=1e9)
    bound = float(np.median(norms))
    reference, _ = _microbatch_reference(model, x, y, "pathmnist", bound)
    # Execute
    sums, _ = clipped_gradient_sum(model, x, y, task="pathmnist", max_grad_norm=bound)
    # Assert
    assert set(sums) == set(reference)
    for name, value in sums.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)
    assert all("forward" not in vars(m) for m in model)


@pytest.mark.parametrize("row_norm", [0.0, 1.0])
def test_the_intercept_input_is_clipped_with_the_rest_of_each_example(row_norm: float) -> None:
    # Prepare: a scaled intercept (rows as encoded, or each scaled to norm 1); the reference
    # is one example at a time, clipped by hand
    torch.manual_seed(0)
    model = build_model("ehr_logistic", intercept_scale=5.0, row_norm=row_norm)
    x, y = (torch.from_numpy(a) for a in _data("ehr_logistic", 16, seed=5))
    _, norms = _microbatch_reference(model, x, y, "ehr", bound=1e9)
    bound = float(np.median(norms))
    reference, _ = _microbatch_reference(model, x, y, "ehr", bound)
    # Execute
    sums, _ = clipped_gradient_sum(model, x, y, task="ehr", max_grad_norm=bound)
    # Assert: the constant column's gradient is 5 x the residual, clipped like the rest
    assert min(norms) < bound < max(norms)
    for key, value in sums.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)
    residuals = torch.sigmoid(model(x)[:, 0]) - y
    factors = torch.tensor([min(1.0, bound / (n + 1e-6)) for n in norms])
    key = "2.weight" if row_norm else "1.weight"
    if row_norm:  # every example's gradient norm is |residual| * sqrt(1 + 5^2)
        expected_norms = residuals.abs().detach() * (1.0 + 25.0) ** 0.5
        np.testing.assert_allclose(norms, expected_norms.numpy(), rtol=1e-4)
    torch.testing.assert_close(
        sums[key][0, N_FEATURES],
        5.0 * (factors * residuals).sum().detach(),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", ["ehr_mlp", "pathmnist_cnn"])
def test_dp_train_applies_the_clipped_sum_divided_by_the_expected_batch(name: str) -> None:
    # Prepare: sigma = 0 and q = 1, so the one update is -lr * clipped_sum / batch_size
    task, _ = CASES[name]
    features, labels = _data(name, 10, seed=3)
    model = _model(name)
    before = model_weights(model)
    reference, _ = _microbatch_reference(
        _model(name), torch.from_numpy(features), torch.from_numpy(labels), task, bound=0.5
    )
    # Execute
    outcome = dp_train(
        model,
        features,
        labels,
        _spec(batch_size=10, lr=1.0, max_grad_norm=0.5),
        task=task,
        test_key=_key(0),
    )
    # Assert
    for key, value in outcome.weights.items():
        step = (before[key] - value) * 10
        np.testing.assert_allclose(step, reference[key].numpy(), rtol=1e-3, atol=2e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_clipped_sum_agrees_with_opacus_grad_samples() -> None:
    # Prepare: Opacus' own per-example gradients, clipped and summed as its optimizer does
    model = _model("pathmnist_cnn", seed=4)
    x, y = (torch.from_numpy(a) for a in _data("pathmnist_cnn", 12, seed=4))
    # A sum loss with loss_reduction="sum" (matching reductions: with "mean" Opacus would
    # rescale the grad samples by the batch size, and a clip-everything bound would hide it).
    sampled = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    F.cross_entropy(sampled(x), y, reduction="sum").backward()
    per_example = {name: p.grad_sample for name, p in sampled._module.named_parameters()}
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_example.values()]).norm(dim=0)
    bound = float(norms.median())  # about half the examples fall below it, unclipped
    assert (norms < bound).any() and (norms > bound).any()
    factors = (bound / (norms + 1e-6)).clamp(max=1.0)
    # Execute
    sums, _ = clipped_gradient_sum(model, x, y, task="pathmnist", max_grad_norm=bound)
    # Assert
    for name, grad in per_example.items():
        torch.testing.assert_close(
            sums[name], torch.einsum("b,b...->...", factors, grad), rtol=1e-4, atol=1e-6
        )


def test_frozen_parameters_get_no_gradient_and_no_noise() -> None:
    model = _model("ehr_mlp")
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    features, labels = _data("ehr_mlp", 20)
    outcome = dp_train(
        model, features, labels, _spec(noise_multiplier=1.0), task="ehr", test_key=_key(0)
    )
    np.testing.assert_array_equal(outcome.weights["0.weight"], frozen.numpy())
    assert not np.array_equal(outcome.weights["0.bias"], _model("ehr_mlp")[0].bias.detach())


def test_unsupported_layers_and_in_place_ops_are_refused() -> None:
    x, y = torch.randn(4, 3, 28, 28), torch.zeros(4, dtype=torch.int64)
    batch_norm = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(9)
    )
    with pytest.raises(ValueError, match="not BatchNorm2d"):
        clipped_gradient_sum(batch_norm, x, y, task="pathmnist", max_grad_norm=1.0)
    in_place = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 9), nn.ReLU(inplace=True))
    with pytest.raises(ValueError, match="changed in place"):
        clipped_gradient_sum(in_place, x, y, task="pathmnist", max_grad_norm=1.0)


# --- (b2) work that does not depend on the rows: masking in one pass, fixed-size batches ----


@pytest.mark.parametrize("name", list(CASES))
def test_masked_padding_rows_change_nothing_in_the_clipped_sum(name: str) -> None:
    # Prepare: 12 real examples, then 5 padding rows of large values, masked
    task, _ = CASES[name]
    model = _model(name)
    x, y = (torch.from_numpy(a) for a in _data(name, 12, seed=6))
    padded_x = torch.cat([x, 100 * torch.randn(5, *x.shape[1:])])
    padded_y = torch.cat([y, y[:5]])
    mask = torch.arange(17) < 12
    # Execute
    reference, loss = clipped_gradient_sum(model, x, y, task=task, max_grad_norm=0.5)
    sums, padded_loss = clipped_gradient_sum(
        model, padded_x, padded_y, task=task, max_grad_norm=0.5, mask=mask
    )
    # Assert
    for key, value in sums.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-7)
    assert padded_loss == pytest.approx(loss, rel=1e-6)


def _overflow_for_feature_0(model: nn.Sequential) -> None:
    """Unit 0 of the first layer fires only for a row with feature 0 above 10; 1e6 weights
    with -1e6 biases carry it to a logit near 1e31, whose gradient overflows float32. Every
    other row sees a dead unit (the weights stay within the zoo's 1e6 bound)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        linears[0].weight[0].zero_()
        linears[0].weight[0, 0], linears[0].bias[0] = 1.0, -10.0
        for layer in linears[1:-1]:
            layer.weight[0].zero_()
            layer.weight[0, 0], layer.bias[0] = 1e6, -1e6
        linears[-1].weight[0, 0] = 1e6


def _with_target(n: int, at: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels) without and with a target row (feature 0 at 30, label 0) at `at`."""
    features, labels = _data("ehr_mlp", n, seed=8)
    features[:, 0] = np.clip(features[:, 0], -3, 3)
    target = np.full((1, N_FEATURES), 0.5, np.float32)
    target[0, 0] = 30.0
    with_features = np.insert(features, at, target[0], axis=0)
    return features, labels, with_features, np.insert(labels, at, np.float32(0.0))


def _counting_forwards(model: nn.Module) -> list[int]:
    """The batch size of every forward pass of the model's first layer, as it happens."""
    sizes: list[int] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    return sizes


def test_a_non_finite_example_contributes_zero_in_the_same_pass() -> None:
    # Prepare: the target's loss is ~1e31 and its gradient overflows; the others are normal
    model = build_model("ehr_mlp", hidden=[16] * 5)
    _overflow_for_feature_0(model)
    features, labels, with_features, with_labels = (
        torch.from_numpy(a) for a in _with_target(20, at=7)
    )
    reference, loss = clipped_gradient_sum(model, features, labels, task="ehr", max_grad_norm=0.5)
    forwards = _counting_forwards(model)
    # Execute
    sums, with_loss = clipped_gradient_sum(
        model, with_features, with_labels, task="ehr", max_grad_norm=0.5
    )
    # Assert: one forward pass of all 21 rows; the target added nothing but the loss bound
    assert forwards == [21]
    for key, value in sums.items():
        assert bool(torch.isfinite(value).all()), key
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-7)
    assert with_loss == pytest.approx(loss + LOSS_BOUND, rel=1e-6)


def test_a_round_processes_its_budget_of_rows_whatever_the_rows() -> None:
    """The same spec on rows without and with the overflowing target: every step is one
    forward pass of its sample (none repeated), and the round's rows, masked passes
    included, are the public budget, in the same number of passes."""
    spec = TrainSpec(
        batch_size=30,
        lr=0.1,
        local_epochs=3,
        max_grad_norm=0.5,
        noise_multiplier=1.0,
        population=60,
        row_bound=90,
    )
    features, labels, with_features, with_labels = _with_target(60, at=11)
    worlds = {"without": (features, labels), "with": (with_features, with_labels)}
    sizes = {}
    for world, data in worlds.items():
        model = build_model("ehr_mlp", hidden=[16] * 5)
        _overflow_for_feature_0(model)
        sizes[world] = _counting_forwards(model)
        outcome = dp_train(model, *data, spec, task="ehr")
        assert all(np.isfinite(w).all() for w in outcome.weights.values())
    budget = batch_bound(90 * 6, 0.5)
    passes = 6 + math.ceil((budget - 6 * 45) / 45)
    assert sum(sizes["with"]) == sum(sizes["without"]) == budget
    assert len(sizes["with"]) == len(sizes["without"]) == passes


# --- (c) the noise has the standard deviation sigma * C ---------------------------------------


def test_noise_std_on_coordinates_without_gradient() -> None:
    # Prepare: all-zero features make every weight gradient exactly zero, so each weight's
    # update is pure noise: update * batch_size / lr ~ N(0, (sigma * C)^2) per step.
    features = np.zeros((64, N_FEATURES), np.float32)
    labels = np.ones(64, np.float32)
    spec = _spec(batch_size=64, lr=0.5, max_grad_norm=0.8, noise_multiplier=1.5)
    noise = []
    for seed in range(8):
        model = _model("ehr_logistic")
        before = model_weights(model)["0.weight"]
        # Execute
        after = dp_train(model, features, labels, spec, task="ehr", test_key=_key(seed))
        noise.append((after.weights["0.weight"] - before) * spec.batch_size / spec.lr)
    # Assert: 8 * N_FEATURES draws; the std estimate is within ~3% at 4 standard errors
    draws = np.concatenate(noise).ravel()
    assert np.std(draws) == pytest.approx(1.5 * 0.8, rel=0.07)
    assert abs(np.mean(draws)) < 4 * 1.2 / math.sqrt(draws.size)


def test_noise_std_on_the_cnn_from_two_runs_differing_only_in_sigma() -> None:
    # Prepare
    features, labels = _data("pathmnist_cnn", 16)
    runs = {}
    for sigma in (0.0, 2.0):
        spec = _spec(batch_size=16, lr=0.1, max_grad_norm=0.7, noise_multiplier=sigma)
        # Execute
        outcome = dp_train(
            _model("pathmnist_cnn"), features, labels, spec, task="pathmnist", test_key=_key(5)
        )
        runs[sigma] = np.concatenate([w.ravel() for w in outcome.weights.values()])
    # Assert: same seed, same batch, so the difference is the noise alone (52k draws)
    noise = (runs[0.0] - runs[2.0]) * 16 / 0.1
    assert np.std(noise) == pytest.approx(2.0 * 0.7, rel=0.02)
    assert abs(np.mean(noise)) < 4 * 1.4 / math.sqrt(noise.size)


def test_empty_batches_are_noised_too() -> None:
    # Prepare: q = 1/100 leaves about 37% of the 300 steps empty; their noise must count.
    features = np.zeros((100, N_FEATURES), np.float32)
    labels = np.ones(100, np.float32)
    spec = _spec(batch_size=1, lr=1.0, local_epochs=3, max_grad_norm=1.0, noise_multiplier=1.0)
    model = _model("ehr_logistic")
    before = model_weights(model)["0.weight"]
    # Execute
    outcome = dp_train(model, features, labels, spec, task="ehr", test_key=_key(3))
    # Assert: the sum of 300 unit-variance draws per weight, not of ~190 non-empty steps
    drift = outcome.weights["0.weight"] - before
    assert outcome.steps == 300
    assert np.std(drift) == pytest.approx(math.sqrt(300), rel=0.15)
    assert np.std(drift) > 1.15 * math.sqrt(300 * (1 - math.exp(-1)))


def test_an_empty_batch_contributes_a_zero_sum() -> None:
    model = _model("ehr_mlp")
    sums, loss = clipped_gradient_sum(
        model, torch.zeros(0, N_FEATURES), torch.zeros(0), task="ehr", max_grad_norm=1.0
    )
    assert loss == 0.0
    assert set(sums) == {name for name, _ in model.named_parameters()}
    assert all(float(s.abs().sum()) == 0.0 for s in sums.values())


def test_a_test_key_reproduces_and_no_key_is_unpredictable() -> None:
    # Prepare
    features, labels = _data("ehr_mlp", 40)
    spec = _spec(batch_size=8, lr=0.1, noise_multiplier=1.0)

    def run(test_key: bytes | None) -> np.ndarray:
        return dp_train(
            _model("ehr_mlp"), features, labels, spec, task="ehr", test_key=test_key
        ).weights["0.weight"]

    # Execute
    keyed, again, fresh, other = run(_key(7)), run(_key(7)), run(None), run(None)
    # Assert: identical inputs and no key, different weights (fresh OS key each call)
    np.testing.assert_array_equal(keyed, again)
    assert not np.array_equal(fresh, other)
    assert not np.array_equal(fresh, keyed)


def test_a_test_key_is_refused_outside_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = _data("ehr_logistic", 10)
    with pytest.raises(ValueError, match="test_key must be 32 bytes"):
        dp_train(_model("ehr_logistic"), features, labels, _spec(), task="ehr", test_key=b"1")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with pytest.raises(ValueError, match="test_key is for tests only"):
        dp_train(_model("ehr_logistic"), features, labels, _spec(), task="ehr", test_key=_key(1))


# --- (d) steps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch_size", "epochs", "steps"), [(10, 3, 2, 8), (9, 3, 1, 3), (5, 5, 3, 3)]
)
def test_steps_are_epochs_times_ceil_n_over_batch(
    n: int, batch_size: int, epochs: int, steps: int
) -> None:
    features, labels = _data("ehr_logistic", n)
    spec = _spec(batch_size=batch_size, local_epochs=epochs, noise_multiplier=1.0)
    outcome = dp_train(_model("ehr_logistic"), features, labels, spec, task="ehr")
    assert isinstance(outcome, TrainOutcome)
    assert outcome.steps == steps == epochs * steps_per_epoch(n, batch_size)
    assert outcome.sample_rate == pytest.approx(batch_size / n)
    assert outcome.samples == n
    assert math.isfinite(outcome.loss)


# --- (e) Poisson sampling -----------------------------------------------------------------------


def test_batches_are_poisson_sampled() -> None:
    # Prepare: zero features, label 0, bias 0 and a tiny C: every sampled example's clipped
    # gradient is exactly +C on the bias, so the bias moves by -lr * C * (examples) / B.
    n, batch_size, bound = 1000, 100, 1e-3
    features, labels = np.zeros((n, N_FEATURES), np.float32), np.zeros(n, np.float32)
    spec = _spec(batch_size=batch_size, lr=1.0, max_grad_norm=bound, noise_multiplier=0.0)
    totals = []
    for seed in range(30):
        model = _model("ehr_logistic")
        nn.init.zeros_(model[0].bias)
        # Execute
        outcome = dp_train(model, features, labels, spec, task="ehr", test_key=_key(seed))
        totals.append(-float(outcome.weights["0.bias"][0]) * batch_size / bound)
    # Assert: 10 steps of Binomial(1000, 0.1) each: mean 1000, variance 10 * 90 = 900
    totals = np.array(totals)
    np.testing.assert_allclose(totals, np.round(totals), atol=1e-2)
    assert abs(totals.mean() - 1000) < 4 * math.sqrt(900 / 30)
    assert 0.35 * 900 < totals.var(ddof=1) < 2.2 * 900


# --- (f) sanity: DP training learns an EHR model ------------------------------------------------


@pytest.mark.parametrize("name", ["ehr_logistic", "ehr_mlp"])
def test_dp_training_lowers_the_loss_on_ehr(name: str) -> None:
    # Prepare
    features, labels = encode_ehr(generate_ehr(3000, seed=1, identifiers=False))
    model = _model(name)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    spec = TrainSpec(
        batch_size=128,
        lr=0.5,
        local_epochs=4,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        momentum=0.5,
    )
    with torch.no_grad():
        before = float(_loss(model(x), y, "ehr"))
    # Execute
    dp_train(model, features, labels, spec, task="ehr", test_key=_key(0))
    with torch.no_grad():
        after = float(_loss(model(x), y, "ehr"))
    # Assert: from ~0.65-0.74 toward the entropy of a 10% base rate (0.33), noise permitting
    # (over seeds 0-5 the mlp reached 0.47-0.51 and the logistic model 0.36-0.37)
    assert after < before - 0.12
    assert after < 0.53


def test_local_steps_replace_the_epochs() -> None:
    features, labels = _data("ehr_logistic", 100)
    spec = _spec(batch_size=10, local_epochs=1, local_steps=3, noise_multiplier=1.0)
    outcome = dp_train(_model("ehr_logistic"), features, labels, spec, task="ehr", test_key=_key(0))
    assert outcome.steps == 3 and outcome.sample_rate == 0.1


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
        ({"local_epochs": True}, "local_epochs must be a positive int"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"lr": math.inf}, "lr must be a finite number"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be a finite number > 0"),
        ({"noise_multiplier": -0.1}, "noise_multiplier must be a finite number >= 0"),
        ({"noise_multiplier": math.nan}, "noise_multiplier must be a finite number"),
        ({"momentum": 1.0}, "momentum must be a finite number >= 0.0 and < 1.0"),
        ({"local_steps": -2}, "local_steps must be a positive int"),
    ],
)
def test_train_spec_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**overrides)


def test_dp_train_input_errors() -> None:
    features, labels = _data("ehr_logistic", 10)
    model = _model("ehr_logistic")
    with pytest.raises(ValueError, match="batch_size 11 exceeds the 10 training examples"):
        dp_train(model, features, labels, _spec(batch_size=11), task="ehr")
    with pytest.raises(ValueError, match="task must be one of ehr, pathmnist"):
        dp_train(model, features, labels, _spec(), task="cifar")
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        dp_train(model, features, labels[:9], _spec(), task="ehr")
    with pytest.raises(ValueError, match="one logit per row"):
        dp_train(nn.Sequential(nn.Linear(N_FEATURES, 2)), features, labels, _spec(), task="ehr")
    features[2, 5] = np.nan
    with pytest.raises(ValueError, match="features must be finite"):
        dp_train(model, features, labels, _spec(), task="ehr")
    with pytest.raises(ValueError, match="n must be a positive int"):
        steps_per_epoch(0, 1)


# --- adaptive clipping (Andrew et al. 2021) ---------------------------------------------------


@pytest.mark.parametrize("z", [0.3, 0.8, 1.5, 4.0])
@pytest.mark.parametrize("batch", [4, 64, 512])
def test_adaptive_clipping_spends_exactly_the_accounted_gaussian_mechanism(
    z: float, batch: int
) -> None:
    """Theorem 1 of Andrew et al.: releasing the clipped sum with noise z_g * C and the count
    of (b_i - 1/2) with noise sd sigma_b is one Gaussian mechanism whose sensitivity, in
    units of its noise, is sqrt((C / (z_g C))^2 + ((1/2) / sigma_b)^2). Brute force over
    the neighbour (an example with any clipped gradient, counted either way) it must be 1/z,
    the noise multiplier the accountant charged."""
    sigma_b = count_noise(batch, z)
    z_grad = gradient_noise_multiplier(z, sigma_b)
    worst = 0.0
    for gradient_norm in (0.0, 0.5, 1.0):  # in units of C: clipped gradients never exceed C
        for count_move in (-0.5, 0.5):  # b_i - 1/2 for a clipped or an unclipped example
            distance = math.hypot(gradient_norm / z_grad, count_move / sigma_b)
            worst = max(worst, distance)
    assert worst == pytest.approx(1.0 / z, rel=1e-12)
    assert z <= z_grad <= 2 / math.sqrt(3) * z + 1e-12
    assert sigma_b >= max(batch / 20, z)


def test_fixed_clipping_is_unchanged_by_the_adaptive_option() -> None:
    features, labels = _ehr_rows(300)
    spec = TrainSpec(batch_size=32, lr=0.1, local_epochs=1, max_grad_norm=0.7, noise_multiplier=1.0)
    first = dp_train(_logistic(), features, labels, spec, task="ehr", test_key=_key(5))
    second = dp_train(_logistic(), features, labels, spec, task="ehr", test_key=_key(5))
    assert first.clip == 0.7
    for name in first.weights:
        np.testing.assert_array_equal(first.weights[name], second.weights[name])
    assert gradient_noise_multiplier(1.3, 0.0) == 1.3


def test_adaptive_clipping_follows_the_quantile_of_the_gradient_norms() -> None:
    """With the weights held still (lr ~0), every example's gradient norm is known:
    0.5 * sqrt(r^2 + 1) for a row r * e_0 at zero weights. Starting 100x too small, C must
    settle at the requested quantile of those norms despite the count noise."""
    rng = np.random.default_rng(3)
    radius = rng.uniform(1.0, 10.0, 4_000)
    features = np.zeros((radius.size, N_FEATURES), np.float32)
    features[:, 0] = radius
    labels = (rng.random(radius.size) < 0.5).astype(np.float32)
    norms = 0.5 * np.sqrt(radius**2 + 1)
    for quantile in (0.3, 0.7):
        spec = TrainSpec(
            batch_size=256,
            lr=1e-12,
            local_epochs=1,
            local_steps=400,
            max_grad_norm=0.03,
            noise_multiplier=1.0,
            clip_quantile=quantile,
        )
        outcome = dp_train(_logistic(), features, labels, spec, task="ehr", test_key=_key(11))
        assert outcome.clip == pytest.approx(np.quantile(norms, quantile), rel=0.1)


def test_adaptive_clipping_settings_are_validated() -> None:
    base = dict(batch_size=8, lr=0.1, local_epochs=1, max_grad_norm=1.0, noise_multiplier=1.0)
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="clip_quantile"):
            TrainSpec(**base, clip_quantile=bad)
    with pytest.raises(ValueError, match="clip_lr"):
        TrainSpec(**base, clip_quantile=0.5, clip_lr=0.0)


def _logistic() -> nn.Module:
    model = build_model("ehr_logistic")
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    return model


def _ehr_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    features = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    return features, (rng.random(n) < 0.3).astype(np.float32)


def test_adaptive_clipping_keeps_c_finite_whatever_the_rows() -> None:
    """Every row clipped (huge gradients) at quantile 0.95 pushes C up every step; the bound
    stops at 1e6 times the approved C instead of reaching infinity (where z * C noise is no
    longer a number), and the released weights stay finite."""
    features = np.full((512, N_FEATURES), 50.0, np.float32)
    labels = np.ones(512, np.float32)
    spec = TrainSpec(
        batch_size=256,
        lr=1e-9,
        local_epochs=1,
        local_steps=2_000,
        max_grad_norm=1e-4,
        noise_multiplier=1.0,
        clip_quantile=0.95,
        clip_lr=0.9,
    )
    model = _logistic()
    with torch.no_grad():
        model[0].bias.fill_(-30.0)  # p ~ 0: every gradient is large and gets clipped
    outcome = dp_train(model, features, labels, spec, task="ehr", test_key=_key(2))
    # Each gradient's norm is 50 * sqrt(N_FEATURES + 1), about 885: above the cap of 100,
    # so C ends at the cap whatever the noise (at 1e-3 it hovered around 885 instead).
    assert outcome.clip == pytest.approx(1e-4 * 1e6)
    assert all(np.isfinite(w).all() for w in outcome.weights.values())


def test_the_process_keeps_freed_memory_once_set() -> None:
    """dp_train asks glibc to keep freed heap memory (no page fault per fresh page at every
    step); asking again changes nothing and reports the same."""
    kept = keep_freed_memory()
    assert keep_freed_memory() is kept
    if ctypes.util.find_library("c") and platform.libc_ver()[0] == "glibc":
        assert kept
