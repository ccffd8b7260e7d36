"""One hospital's local DP-SGD training (Abadi et al., 2016), exact and fast on a CPU.

The mechanism, which the hospital's ledger accounts as a Poisson-subsampled Gaussian event
repeated `steps` times with sample rate q = batch_size / n and noise multiplier sigma:
each step includes every example independently with probability q, clips each included
example's gradient to L2 norm at most C, adds N(0, (sigma * C)^2) to every coordinate of the
sum and divides by the *expected* batch size. Empty batches are stepped and noised too. Any
other sampling (shuffled fixed batches, dropping empty batches, dividing by the realised
size) would invalidate the accounted guarantee.

Why our own per-example gradients instead of Opacus' GradSampleModule: the hooks path
materialises every layer's per-example gradients through unfold and runs autograd for weight
gradients it then discards (under half the non-private throughput: benchmarks/README.md,
"dp_throughput"). This module records
each layer's input and output gradient in one backward pass that skips the batch weight
gradients, takes per-example norms of linear layers without materialising them ("ghost
norms", Goodfellow 2015; Li et al., 2022), gets per-example convolution gradients from one
grouped convolution backward with the batch as groups and GroupNorm's from the very backward
kernel call that gives its input gradient, and forms the clipped sum directly (book-keeping,
Bu et al., 2023). In that pass, MaxPool2d and GroupNorm run through functions of their own
that give the same values and gradients with less work (`_ChannelsLastMaxPool`,
`_FusedGroupNorm`). `tests/unit/test_dp.py` proves it equal to one-example-at-a-time
microbatching. Opacus remains the source of truth for what it is best at: the validator that
admits a model, and the accountants.

What a scientist's weights cannot reach (issue 26): the randomness and the amount of work.
Sampling and noise come from a ChaCha20 stream keyed from the OS per call
(`datasites.privacy.stream`), never from a seeded generator. A round processes a number of
rows fixed by public figures (`datasites.privacy.sampling`: masked passes make up what the
Poisson samples did not use), and an example whose loss or gradient is not finite is masked
inside the same pass, so weights that overflow for one patient change neither the reply nor
the time it takes.
"""

from __future__ import annotations

import ctypes
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasites.contract.release import LOSS_BOUND
from datasites.contract.tasks import TASKS
from datasites.contract.zoo import model_weights
from datasites.privacy.noise import secure_gaussian
from datasites.privacy.sampling import PoissonBatches
from datasites.privacy.stream import RandomStream

if TYPE_CHECKING:
    from datasites.contract.plan import Plan
    from datasites.privacy.ledger import StudyRecord

__all__ = [
    "TASKS",
    "TrainOutcome",
    "TrainSpec",
    "clipped_gradient_sum",
    "dp_train",
    "keep_freed_memory",
    "steps_per_epoch",
]

# Opacus adds this to the norm before dividing, so a zero gradient never divides by zero.
_CLIP_EPSILON = 1e-6


@dataclass(frozen=True)
class TrainSpec:
    """Hyperparameters of one local DP-SGD run; the runtime sets sigma, not the scientist."""

    batch_size: int
    """Expected batch size; the Poisson sampling rate is q = batch_size / n."""
    lr: float
    local_epochs: int
    max_grad_norm: float
    """Per-example clipping bound C."""
    noise_multiplier: float
    """sigma: the noise added to the summed clipped gradients has std sigma * C."""
    momentum: float = 0.0
    local_steps: int = 0
    """If set, exactly this many steps (the ledger's steps per round) instead of
    `local_epochs * ceil(n / batch_size)`."""
    population: int = 0
    """If set, the n of the sampling rate and the steps: the dataset's released (noisy)
    size, so that nothing about the exact count reaches the weights' schedule."""
    row_bound: int = 0
    """If set, a public upper bound on the rows (the released n plus a margin for its noise):
    the sampling's coins and the round's row budget follow it, not the exact count. Else
    population (or the exact count)."""
    clip_quantile: float = 0.0
    """If set, adaptive clipping (`AdaptiveClip`): C starts at max_grad_norm and follows
    this quantile of the per-example gradient norms."""
    clip_lr: float = 0.2
    """The geometric step of adaptive clipping (Andrew et al. use 0.2)."""

    def __post_init__(self) -> None:
        _check_positive_int("batch_size", self.batch_size)
        if self.population:
            _check_positive_int("population", self.population)
        if self.row_bound:
            _check_positive_int("row_bound", self.row_bound)
        _check_positive_int("local_epochs", self.local_epochs)
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        _check_number("noise_multiplier", self.noise_multiplier, low=0.0)
        _check_number("momentum", self.momentum, low=0.0, high=1.0)
        if self.local_steps:
            _check_positive_int("local_steps", self.local_steps)
        _check_number("clip_quantile", self.clip_quantile, low=0.0, high=1.0)
        _check_number("clip_lr", self.clip_lr, low=0.0, low_open=True, high=1.0)

    @classmethod
    def for_study(cls, record: StudyRecord, plan: Plan) -> TrainSpec:
        """A round of an approved study: the plan's hyperparameters, this hospital's noise,
        steps and released n (the runtime's one way of building it)."""
        return cls(
            batch_size=record.batch_size,
            lr=plan.lr,
            local_epochs=plan.local_epochs,
            max_grad_norm=plan.max_grad_norm,
            noise_multiplier=record.noise_multiplier,
            momentum=plan.momentum,
            local_steps=record.steps_per_round,
            population=record.n,
            row_bound=record.row_bound,
            clip_quantile=plan.clip_quantile,
        )


@dataclass(frozen=True)
class TrainOutcome:
    """What one local run produced. Only `weights` are DP; `loss` is not noised."""

    weights: dict[str, np.ndarray]
    loss: float
    """Mean over non-empty steps of the batch's mean loss (NaN if every batch was empty; an
    example with a non-finite loss or gradient counts as LOSS_BOUND). Computed from private
    rows without noise: releasing it is not covered by the DP event."""
    steps: int
    sample_rate: float
    samples: int
    clip: float = 0.0
    """The clipping bound after the last step (max_grad_norm unless clipping is adaptive)."""


def steps_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / batch_size): the steps per epoch that dp_train takes and the ledger charges."""
    _check_positive_int("n", n)
    _check_positive_int("batch_size", batch_size)
    return -(-n // batch_size)


def dp_train(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    spec: TrainSpec,
    *,
    task: str,
    test_key: bytes | None = None,
    padded: bool = True,
) -> TrainOutcome:
    """Train `model` in place with DP-SGD and return a copy of its new weights.

    `features`/`labels` are the encoded private set (`datasites.contract.encoding`). The
    sampling and noise come from a ChaCha20 stream keyed with 32 bytes from os.urandom, so
    whoever sees the weights cannot predict (and subtract) the noise; `test_key` fixes the
    key for a reproducible test and is refused outside pytest. `padded=False` skips the
    masked passes, so that the time follows the data: only for measuring what padding
    costs (benchmarks/dp_throughput.py); the runtime never passes it.
    """
    keep_freed_memory()
    stream = RandomStream(test_key)
    inputs, targets = _tensors(features, labels, task)
    n = spec.population or int(inputs.shape[0])
    if spec.batch_size > n:
        raise ValueError(
            f"batch_size {spec.batch_size} exceeds the {n} training examples; "
            "the sampling rate batch_size / n must be at most 1."
        )
    steps = spec.local_steps or spec.local_epochs * steps_per_epoch(n, spec.batch_size)
    batches = PoissonBatches(
        real=int(inputs.shape[0]),
        bound=spec.row_bound or n,
        rate=spec.batch_size / n,
        steps=steps,
        stream=stream,
        padded=padded,
    )
    was_training = model.training
    model.train()
    try:
        with _flushing_denormals():
            losses, clip = _train_steps(model, (inputs, targets), spec, steps, task, batches)
    finally:
        model.train(was_training)
    mean_loss = float(np.mean(losses)) if losses else math.nan
    return TrainOutcome(model_weights(model), mean_loss, steps, spec.batch_size / n, n, clip)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_HEAP = 1 << 30
_MMAP_FROM = 32 << 20  # glibc's largest: tensors above it are still mapped and unmapped
_allocator = {"set": False}


def keep_freed_memory() -> bool:
    """Let this process keep the heap memory it frees (glibc), once per process; True if
    the allocator took the settings.

    By default glibc returns the top of the heap to the kernel whenever more than about
    twice its (adaptive) mmap threshold is free there, and maps and unmaps larger blocks
    each time: a DP step, which frees and takes back tens of megabytes of per-example
    tensors, then pays a page fault for every fresh page (about 2 us each on the project's
    VM; a DP step at batch 256 took 88 ms instead of 68, plain SGD 68 instead of 65). With
    these settings the process keeps up to its peak heap and takes no fresh pages once warm.
    Process-wide, like torch's thread settings: whatever else the process trains or
    evaluates gets the same allocator (benchmarks/README.md, "dp_throughput"). Elsewhere
    (no glibc) nothing changes."""
    if not _allocator["set"]:
        _allocator["set"] = True
        try:
            mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        done = mallopt(_M_TRIM_THRESHOLD, _KEPT_HEAP) == 1
        _allocator["kept"] = done and mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM) == 1
    return bool(_allocator.get("kept", False))


def clipped_gradient_sum(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    task: str,
    max_grad_norm: float,
    mask: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Sum over the batch of each example's gradient clipped to norm `max_grad_norm`.

    Returns the sums by parameter name (trainable parameters only) and the summed loss.
    Exact: equal, up to float rounding, to running the examples one at a time. Supports
    Linear, Conv2d (zero padding) and GroupNorm layers, each called once per forward.
    Examples where the boolean `mask` is False (padding) contribute nothing; an example
    whose loss or gradient is not finite contributes a zero gradient and LOSS_BOUND.
    """
    if mask is None:
        mask = torch.ones(inputs.shape[0], dtype=torch.bool)
    sums, loss, _ = _clipped_sum(model, inputs, targets, task, max_grad_norm, mask)
    return sums, loss


def _clipped_sum(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    max_grad_norm: float,
    mask: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], float, int]:
    """`clipped_gradient_sum`, and how many real examples had a norm of at most C."""
    params = _trainable(model)
    if inputs.shape[0] == 0:
        return {name: torch.zeros_like(p) for name, p in params.items()}, 0.0, 0
    with _recording(model, params) as records:
        losses = _per_example_loss(model(inputs), targets, task)
    _check_unmodified(records)
    layers = _backward(losses.sum(), records)
    squared = torch.zeros(inputs.shape[0])
    for layer in layers:
        squared += layer.squared_norms()
    losses = losses.detach()
    # Total, in one pass whatever the rows hold: weights may overflow for exactly the
    # examples meeting some condition. Such an example gets clip factor 0 (a zero gradient
    # moves the sum by at most C, like any other example) and the loss bound; recomputing
    # the batch without it took longer exactly when it was sampled (issue 26).
    keep = mask & torch.isfinite(squared) & torch.isfinite(losses)
    norms = torch.where(keep, squared, 0.0).sqrt()
    factors = torch.where(keep, (max_grad_norm / (norms + _CLIP_EPSILON)).clamp(max=1.0), 0.0)
    # Each parameter belongs to exactly one layer: no accumulation buffers needed.
    found = {id(p): total for layer in layers for p, total in layer.weighted_sum(factors).items()}
    sums = {name: found.get(id(p), torch.zeros_like(p)) for name, p in params.items()}
    bounded = torch.where(keep, losses, torch.where(mask, LOSS_BOUND, 0.0))
    unclipped = int((keep & (norms <= max_grad_norm)).sum())
    return sums, float(bounded.sum()), unclipped


# --- the steps --------------------------------------------------------------------------------


def _train_steps(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    spec: TrainSpec,
    steps: int,
    task: str,
    batches: PoissonBatches,
) -> tuple[list[float], float]:
    """Run the DP-SGD steps; return the mean loss of each non-empty batch, and the final C."""
    params = _trainable(model)
    optimizer = torch.optim.SGD(list(params.values()), lr=spec.lr, momentum=spec.momentum)
    clip = AdaptiveClip.of(spec)
    losses = []
    for _ in range(steps):
        # Poisson sampling: each row independently, so a batch may be empty.
        indices, sampled = batches.draw()
        inputs, targets = (t.index_select(0, indices) for t in data)
        every = torch.ones(sampled, dtype=torch.bool)
        sums, loss_sum, unclipped = _clipped_sum(model, inputs, targets, task, clip.bound, every)
        if sampled:
            losses.append(loss_sum / sampled)
        stream = batches.stream
        _noisy_step(optimizer, params, sums, clip.gradient_noise_std(), spec.batch_size, stream)
        clip.update(unclipped, sampled, stream)
    for size in batches.padding():
        _masked_pass(model, data, size, task, clip.bound)
    return losses, clip.bound


def _masked_pass(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], size: int, task: str, bound: float
) -> None:
    """The work of `size` rows, discarded: zero rows, every one masked (factor 0), so the
    round's rows reach its public budget whatever the samples held."""
    inputs = torch.zeros((size, *data[0].shape[1:]), dtype=data[0].dtype)
    targets = torch.zeros(size, dtype=data[1].dtype)
    mask = torch.zeros(size, dtype=torch.bool)
    _clipped_sum(model, inputs, targets, task, bound, mask)


@contextmanager
def _flushing_denormals() -> Iterator[None]:
    """Denormal floats (which a scientist's weights can produce for chosen rows) cost extra
    cycles on many CPUs: flush them to zero in this thread while training. torch cannot
    report the previous setting; the default (off) is restored."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@dataclass
class AdaptiveClip:
    """The clipping bound C of each step: fixed, or following a quantile of the gradient norms.

    Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive
    Clipping", NeurIPS 2021; Flower's DifferentialPrivacyClientSideAdaptiveClipping): after
    each step, C <- C * exp(-clip_lr * (b - quantile)), where b is the noised share of the
    batch whose gradient norm was at most C. The count and the gradient sum are released by
    one Gaussian mechanism with noise multiplier z, the accounted one: the count of
    b_i - 1/2 (each example moves it by exactly 1/2) gets noise sd `count_noise`, the gradient
    sum gets z_grad = (z^-2 - (2 * count_noise)^-2)^(-1/2), slightly more than z (Theorem 1
    of the paper). With count_noise at least z, z_grad is at most 1.16 z.
    """

    bound: float
    noise_multiplier: float
    quantile: float = 0.0
    clip_lr: float = 0.2
    count_noise: float = 0.0
    batch_size: int = 1
    start: float = field(init=False)
    """The approved max_grad_norm, which bounds how far C may move."""

    def __post_init__(self) -> None:
        self.start = self.bound

    @classmethod
    def of(cls, spec: TrainSpec) -> AdaptiveClip:
        """The plan's clipping: no count is released (and none is noised) when C is fixed."""
        adaptive = bool(spec.clip_quantile)
        return cls(
            bound=spec.max_grad_norm,
            noise_multiplier=spec.noise_multiplier,
            quantile=spec.clip_quantile,
            clip_lr=spec.clip_lr,
            count_noise=count_noise(spec.batch_size, spec.noise_multiplier) if adaptive else 0.0,
            batch_size=spec.batch_size,
        )

    def gradient_noise_std(self) -> float:
        """The standard deviation of the noise on the summed clipped gradients."""
        return gradient_noise_multiplier(self.noise_multiplier, self.count_noise) * self.bound

    def update(self, unclipped: int, sampled: int, stream: RandomStream) -> None:
        """Move C after a step in which `unclipped` of the `sampled` examples had norm <= C.

        The released count is sum(b_i - 1/2) + noise: each example moves it by exactly 1/2
        whether or not it is clipped, so the batch's (private) size does not leak through it;
        the expected batch size (public) turns it back into a share."""
        if not self.quantile:
            return
        noise = float(secure_gaussian(1, self.count_noise, stream)[0])
        share = (unclipped - sampled / 2 + noise) / self.batch_size + 0.5
        moved = self.bound * math.exp(-self.clip_lr * (share - self.quantile))
        # Kept within 1e-6..1e6 of the approved max_grad_norm: a plan's quantile and rows
        # that are all clipped (or none) cannot walk C to 0 or to infinity, where the noise
        # (z * C) would stop being a finite number. Post-processing of released values.
        self.bound = min(max(moved, self.start * _CLIP_RANGE**-1), self.start * _CLIP_RANGE)


_CLIP_RANGE = 1e6


def count_noise(batch_size: int, noise_multiplier: float) -> float:
    """The sd of the unclipped count's noise: batch/20 as in Andrew et al., and at least z so
    that the gradient's share of the mechanism keeps most of its noise budget."""
    return max(batch_size / 20.0, noise_multiplier)


def gradient_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_grad with z^-2 = z_grad^-2 + (2 count_noise)^-2 (count_noise 0: no count released)."""
    if not count_noise or not noise_multiplier:
        return noise_multiplier
    remaining = noise_multiplier**-2 - (2.0 * count_noise) ** -2
    return remaining**-0.5


def _noisy_step(
    optimizer: torch.optim.Optimizer,
    params: dict[str, nn.Parameter],
    sums: dict[str, torch.Tensor],
    noise_std: float,
    batch_size: int,
    stream: RandomStream,
) -> None:
    # One flat buffer: a handful of large ops instead of four per parameter, which matters
    # when intra-op threads compete for cores. The noise is drawn even when sigma == 0, so
    # runs that differ only in sigma share their randomness.
    flat = torch.cat([sums[name].reshape(-1) for name in params])
    # Secure-mode draws (`datasites.privacy.noise`): each value the halved sum of four Gaussians.
    flat.add_(secure_gaussian(flat.numel(), noise_std, stream))
    flat.div_(batch_size)
    offset = 0
    for param in params.values():
        param.grad = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _per_example_loss(output: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    if task == "ehr":
        if output.ndim != 2 or output.shape[1] != 1:
            raise ValueError(f"an ehr model must output one logit per row, found {output.shape}.")
        return F.binary_cross_entropy_with_logits(output[:, 0], targets, reduction="none")
    return F.cross_entropy(output, targets, reduction="none")


# --- recording a forward pass -----------------------------------------------------------------

_SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)


@dataclass
class _Record:
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None
    versions: tuple[int, int]
    fused: dict[str, _Layer] | None = None
    """For a GroupNorm run by `_FusedGroupNorm`: where its backward leaves the layer's
    per-example gradients (empty until the backward pass reaches the layer)."""


@contextmanager
def _recording(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[list[_Record]]:
    """Keep each trainable layer's input and output during one forward pass."""
    records: list[_Record] = []
    layers = _trainable_layers(model, params)
    sinks: dict[int, dict[str, _Layer]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if any(r.module is module for r in records):
            raise ValueError(f"{type(module).__name__} runs twice in one forward; not supported.")
        versions = (args[0]._version, output._version)
        records.append(_Record(module, args[0], output, versions, sinks.pop(id(module), None)))

    handles = [m.register_forward_hook(hook) for m in layers]
    patched = _patch_forwards(model, layers, sinks)
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward


def _patch_forwards(
    model: nn.Module, layers: list[nn.Module], sinks: dict[int, dict[str, _Layer]]
) -> list[nn.Module]:
    """Run the DP pass's MaxPool2d and trainable GroupNorm layers through the functions
    below (the same values and gradients, less work), by an instance attribute `forward`
    that `_recording` deletes again: the scientist's modules are left as they were."""
    patched = []
    trainable = {id(m) for m in layers}
    for module in model.modules():
        if "forward" in vars(module):
            continue
        if type(module) is nn.MaxPool2d and not module.return_indices:
            module.forward = _pool_forward(module)
        elif type(module) is nn.GroupNorm and id(module) in trainable:
            module.forward = _group_norm_forward(module, sinks)
        else:
            continue
        patched.append(module)
    return patched


def _pool_forward(module: nn.MaxPool2d) -> Any:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride) if module.stride else kernel
    settings = (kernel, stride, _pair(module.padding), _pair(module.dilation), module.ceil_mode)

    def forward(values: torch.Tensor) -> torch.Tensor:
        if values.ndim != 4 or not values.is_contiguous():
            return type(module).forward(module, values)
        return _ChannelsLastMaxPool.apply(values, settings)

    return forward


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, tuple | list) else [int(value)] * 2


class _ChannelsLastMaxPool(torch.autograd.Function):
    """MaxPool2d of a contiguous (N, C, H, W) tensor, pooled on a channels-last copy, its
    gradient scattered by torch's (N, C, H, W) backward kernel with the same indices.

    The same values, indices and gradients: the maximum of each window and the index of its
    first maximum (scanned in the same order) whatever the layout, and the indices of both
    layouts count positions within one (H, W) plane. torch's forward kernel for contiguous
    (N, C, H, W) tensors is scalar (about 23 ms of this CNN's 92 ms DP step at batch 256),
    the channels-last one is vectorised over channels; its backward kernel is fast in
    either layout, so the gradient needs no copies (benchmarks/README.md, "dp_throughput")."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, settings: tuple[Any, ...]) -> Any:
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(
            values.contiguous(memory_format=torch.channels_last), *settings
        )
        ctx.save_for_backward(values, indices)
        ctx.settings = settings
        return pooled.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        values, indices = ctx.saved_tensors
        return (
            torch.ops.aten.max_pool2d_with_indices_backward(
                grad.contiguous(), values, *ctx.settings, indices
            ),
            None,
        )


def _group_norm_forward(module: nn.GroupNorm, sinks: dict[int, dict[str, _Layer]]) -> Any:
    def forward(values: torch.Tensor) -> torch.Tensor:
        sink: dict[str, _Layer] = {}
        sinks[id(module)] = sink
        return _FusedGroupNorm.apply(values, module.weight, module.bias, module, sink)

    return forward


class _FusedGroupNorm(torch.autograd.Function):
    """GroupNorm whose backward also leaves the per-example affine gradients in `sink`.

    One call of torch's GroupNorm backward kernel with the batch folded into the channels
    (each example's channels as channels of one example, gamma tiled): its input gradient is
    the layer's (each group is normalised alone either way) and its (gamma, beta) gradients,
    summed over that one-example batch, are exactly the per-example ones. The statistics are
    the forward kernel's own, kept from the forward pass; the kernel forms sum(dy * x_hat)
    as (sum(dy * x) - mean * sum(dy)) * rstd, as it does for plain SGD. One kernel pass over
    the layer's tensors instead of two, and no recomputed statistics."""

    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        module: nn.GroupNorm,
        sink: dict[str, _Layer],
    ) -> Any:
        batch, channels = values.shape[:2]
        spatial = math.prod(values.shape[2:])
        out, mean, rstd = torch.native_group_norm(
            values, weight, bias, batch, channels, spatial, module.num_groups, module.eps
        )
        ctx.save_for_backward(values, weight, mean, rstd)
        ctx.module, ctx.sink = module, sink
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        values, weight, mean, rstd = ctx.saved_tensors
        module = ctx.module
        batch, channels = values.shape[:2]
        spatial, groups = math.prod(values.shape[2:]), batch * module.num_groups
        wanted = [p is not None and p.requires_grad for p in (module.weight, module.bias)]
        folded = None if weight is None else weight.detach().repeat(batch)
        inputs, weights, biases = torch.ops.aten.native_group_norm_backward(
            grad.reshape(1, batch * channels, spatial),
            values.reshape(1, batch * channels, spatial),
            mean.reshape(1, groups),
            rstd.reshape(1, groups),
            folded,
            1,
            batch * channels,
            spatial,
            groups,
            [ctx.needs_input_grad[0], *wanted],
        )
        ctx.sink["layer"] = _Materialised(
            _wanted(
                module,
                weight=lambda: weights.view(batch, channels),
                bias=lambda: biases.view(batch, channels),
            )
        )
        return (None if inputs is None else inputs.view(values.shape)), None, None, None, None


def _backward(loss: torch.Tensor, records: list[_Record]) -> list[_Layer]:
    """One backward pass that turns each layer's output gradient into its per-example form
    as soon as the gradient exists, then lets it go.

    Asking autograd for every recorded output's gradient would keep all of them (for this
    CNN, tens of megabytes at batch 256) until the pass ends, and the process would take
    fresh pages from the kernel at every step, a fault per page. Instead a hook on each
    output consumes its gradient when the pass reaches it, and the pass is asked only for
    the outputs that depend on no other recorded output (their gradients come last): the
    rest are computed on the way, as for plain SGD. A layer's tensors are let go once
    consumed (outputs that autograd does not keep, such as a GroupNorm's, at once), so that
    the step's memory peaks no higher than it must. A GroupNorm run by `_FusedGroupNorm`
    leaves its per-example gradients from its own backward instead (unless it is a source:
    the pass stops at its output, whose gradient is then used as for the other layers).
    """
    layers: dict[int, _Layer] = {}

    def consumer(index: int) -> Any:
        def consume(grad: torch.Tensor) -> None:
            if index not in layers:
                layers[index] = _per_example(records[index], grad)
                records[index].input = None

        return consume

    sources = _sources(records)
    handles = [
        r.output.register_hook(consumer(i))
        for i, r in enumerate(records)
        if r.fused is None or i in sources
    ]
    try:
        outputs = [records[i].output for i in sources]
        for index, record in enumerate(records):
            record.output = None
            if record.fused is not None and index not in sources:
                record.input = None  # the function's context keeps what it needs
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    del outputs
    for index, record in enumerate(records):
        if record.fused and index not in layers:
            layers[index] = record.fused.pop("layer")
    for index, grad in zip(sources, grads, strict=True):
        if grad is not None and index not in layers:
            layers[index] = _per_example(records[index], grad)
    return [layers[i] for i in sorted(layers)]


def _sources(records: list[_Record]) -> list[int]:
    """The records whose output depends on no other record's output (walking the graph back
    from each output to the leaves, stopping at recorded outputs). Backpropagating to these
    computes every recorded output's gradient that reaches the loss."""
    nodes = {r.output.grad_fn: i for i, r in enumerate(records) if r.output.grad_fn is not None}
    sources = []
    for index, record in enumerate(records):
        start = record.output.grad_fn
        if start is None:
            continue
        stack = [fn for fn, _ in start.next_functions if fn is not None]
        seen = set()
        dependent = False
        while stack and not dependent:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in nodes:
                dependent = True
            else:
                stack.extend(fn for fn, _ in node.next_functions if fn is not None)
        if not dependent:
            sources.append(index)
    return sources


def _check_unmodified(records: list[_Record]) -> None:
    # An in-place op (ReLU(inplace=True)) after a layer would change the tensors the
    # per-example gradients are computed from, silently breaking exactness.
    for r in records:
        if (r.input._version, r.output._version) != r.versions:
            raise ValueError(f"a {type(r.module).__name__} input or output is changed in place.")


def _trainable_layers(model: nn.Module, params: dict[str, nn.Parameter]) -> list[nn.Module]:
    layers = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(module) not in _SUPPORTED:
            raise ValueError(
                f"dp_train supports Linear, Conv2d and GroupNorm layers, not "
                f"{type(module).__name__}; use a model from the zoo."
            )
        if isinstance(module, nn.Conv2d) and (
            module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise ValueError("dp_train supports Conv2d layers with numeric zero padding only.")
        layers.append(module)
    return layers


# --- per-example gradients, layer by layer -----------------------------------------------------


class _Layer:
    """A layer's per-example gradients in some form: their norms and a reweighted sum."""

    def squared_norms(self) -> torch.Tensor:
        raise NotImplementedError

    def weighted_sum(self, factors: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """The factor-weighted sum over examples. An example with factor 0 may hold inf or NaN,
        and NaN * 0 is NaN: non-finite values are zeroed first (every value of an example with
        a finite squared norm is finite), never skipped."""
        raise NotImplementedError


@dataclass
class _GhostLinear(_Layer):
    """Linear layer on (B, in) inputs: grad_i = b_i a_i^T, never materialised."""

    module: nn.Linear
    activations: torch.Tensor
    backprops: torch.Tensor

    def squared_norms(self) -> torch.Tensor:
        out = self.backprops.square().sum(1)
        total = torch.zeros_like(out)
        if self.module.weight.requires_grad:
            total = total + self.activations.square().sum(1) * out
        if self.module.bias is not None and self.module.bias.requires_grad:
            total = total + out
        return total

    def weighted_sum(self, factors: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        scaled = _finite(self.backprops) * factors[:, None]
        sums = {}
        if self.module.weight.requires_grad:
            sums[self.module.weight] = scaled.t() @ _finite(self.activations)
        if self.module.bias is not None and self.module.bias.requires_grad:
            sums[self.module.bias] = scaled.sum(0)
        return sums


@dataclass
class _Materialised(_Layer):
    """Per-example gradients held as (B, *param.shape) tensors."""

    grads: dict[nn.Parameter, torch.Tensor]

    def squared_norms(self) -> torch.Tensor:
        # vector_norm reduces without an (B, P) temporary for the squares.
        return sum(
            torch.linalg.vector_norm(g.flatten(1), dim=1).square() for g in self.grads.values()
        )

    def weighted_sum(self, factors: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        # In place: the per-example gradients are this object's own temporaries (and
        # nan_to_num_ costs a tenth of a broadcast masked_fill_).
        return {
            p: (factors @ g.flatten(1).nan_to_num_(0.0, 0.0, 0.0)).view(p.shape)
            for p, g in self.grads.items()
        }


def _finite(values: torch.Tensor) -> torch.Tensor:
    """`values` with inf and NaN replaced by 0 (a copy: these may be the caller's tensors)."""
    return torch.nan_to_num(values, 0.0, 0.0, 0.0)


def _per_example(record: _Record, backprops: torch.Tensor) -> _Layer:
    module, activations = record.module, record.input.detach()
    if isinstance(module, nn.Linear):
        if activations.ndim == 2:
            return _GhostLinear(module, activations, backprops)
        return _Materialised(_linear_grads(module, activations, backprops))
    if isinstance(module, nn.Conv2d):
        return _Materialised(_conv_grads(module, activations, backprops))
    return _Materialised(_group_norm_grads(module, activations, backprops))


def _wanted(module: nn.Module, **grads: Any) -> dict[nn.Parameter, torch.Tensor]:
    """Keep the gradients of the module's trainable parameters, computing them lazily."""
    out = {}
    for name, compute in grads.items():
        param = getattr(module, name)
        if param is not None and param.requires_grad:
            out[param] = compute()
    return out


def _linear_grads(
    module: nn.Linear, activations: torch.Tensor, backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    a = activations.flatten(1, -2)
    b = backprops.flatten(1, -2)
    return _wanted(module, weight=lambda: torch.einsum("bto,bti->boi", b, a), bias=lambda: b.sum(1))


def _conv_grads(
    module: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    return _wanted(
        module,
        weight=lambda: _conv_weight_grads(module, activations, backprops),
        bias=lambda: backprops.sum((2, 3)),
    )


def _conv_weight_grads(
    module: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor
) -> torch.Tensor:
    """Per-example weight gradients from ONE grouped convolution backward.

    Stacking the batch along channels and setting groups = B * groups makes example b its
    own group, so the grouped layer's weight gradient is exactly the per-example gradients.
    """
    batch, channels = activations.shape[:2]
    out_channels = module.out_channels
    grouped_weight = torch.empty(batch * out_channels, *module.weight.shape[1:])
    _, grads, _ = torch.ops.aten.convolution_backward(
        backprops.reshape(1, batch * out_channels, *backprops.shape[2:]),
        activations.reshape(1, batch * channels, *activations.shape[2:]),
        grouped_weight,
        None,
        list(module.stride),
        list(module.padding),
        list(module.dilation),
        False,
        [0, 0],
        batch * module.groups,
        [False, True, False],
    )
    return grads.view(batch, *module.weight.shape)


def _group_norm_grads(
    module: nn.GroupNorm, activations: torch.Tensor, backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example affine gradients from torch's own GroupNorm backward kernel, with each
    example's channels as channels of one example: its (gamma, beta) gradients summed over
    that one-example batch are exactly the per-example ones. The statistics come from the
    forward kernel on the same input (the values the layer normalised with), and the kernel
    forms sum(dy * x_hat) as (sum(dy * x) - mean * sum(dy)) * rstd, as it does for plain SGD."""
    batch, channels = activations.shape[:2]
    groups, spatial = module.num_groups, activations[0, 0].numel()
    wanted = [p is not None and p.requires_grad for p in (module.weight, module.bias)]
    if not any(wanted):
        return {}
    _, mean, rstd = torch.native_group_norm(
        activations, None, None, batch, channels, spatial, groups, module.eps
    )
    _, weight, bias = torch.ops.aten.native_group_norm_backward(
        backprops.reshape(1, batch * channels, spatial),
        activations.reshape(1, batch * channels, spatial),
        mean.reshape(1, batch * groups),
        rstd.reshape(1, batch * groups),
        torch.ones(batch * channels, dtype=activations.dtype),  # the signature needs it; unused
        1,
        batch * channels,
        spatial,
        batch * groups,
        [False, *wanted],
    )
    return _wanted(
        module,
        weight=lambda: weight.view(batch, channels),
        bias=lambda: bias.view(batch, channels),
    )


# --- inputs -----------------------------------------------------------------------------------


def _tensors(features: np.ndarray, labels: np.ndarray, task: str) -> tuple[torch.Tensor, ...]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, found {task!r}.")
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim < 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (n, ...) array, found {features.shape}.")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must have shape ({features.shape[0]},), found {labels.shape}.")
    if not np.isfinite(features).all():
        raise ValueError(
            "features must be finite; encode the data with datasites.contract.encoding."
        )
    inputs = tensor_view(np.ascontiguousarray(features, dtype=np.float32))
    if task == "ehr":
        return inputs, torch.from_numpy(labels.astype(np.float32))
    return inputs, torch.from_numpy(labels.astype(np.int64))


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters.")
    return params


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, found {value!r}.")


def _check_number(
    name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False
) -> None:
    ok_type = not isinstance(value, bool) and isinstance(value, int | float | np.number)
    in_range = ok_type and math.isfinite(value) and low <= value < high
    if not in_range or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        upper = f" and < {high}" if math.isfinite(high) else ""
        raise ValueError(f"{name} must be a finite number {bound}{upper}, found {value!r}.")


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """`torch.from_numpy`, also for the memo's read-only arrays, without torch's warning.

    Training and evaluation only read these tensors (indexing copies), so sharing the
    read-only memory is safe; torch warns because it cannot mark a tensor read-only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
