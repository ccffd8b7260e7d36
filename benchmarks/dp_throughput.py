"""Throughput of DP-SGD against plain SGD for pathmnist_cnn, measured in one run.

Usage: python benchmarks/dp_throughput.py [--seconds S] [--batch-size 256] [--threads T]

Four trainers take turns on the same synthetic PathMNIST tiles at the same (expected) batch
size: plain SGD on shuffled fixed batches, this project's DP path (`datasites.privacy.dp.dp_train`:
Poisson sampling, masked passes that bring each round's rows to a budget set by public
figures, exact per-example clipping, Gaussian noise), the same without the masked passes
(`padded=False`: what the padding costs) and Opacus' default hooks
path (`PrivacyEngine.make_private`, Poisson sampling) for reference. They are interleaved round
by round, rotating the order, after one warm-up round, so that load from other processes on a
shared machine hits all of them alike. Each rate is samples over time summed over the rounds;
`ratio_median_round` is the median of the per-round dp/plain ratios; `ratio_cpu` and
`ratio_unpadded_cpu` are the ratios of the CPU time each trainer used. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from datasites.contract.encoding import encode_images
from datasites.contract.zoo import build_model
from datasites.privacy.dp import TrainSpec, dp_train, keep_freed_memory
from datasites.privacy.noise import secure_gaussian
from datasites.privacy.sampling import batch_bound
from datasites.privacy.stream import RandomStream
from synthetic.pathology import generate_pathmnist

TARGET = 0.6
MODEL = "pathmnist_cnn"
LR = 0.05


def main(argv: list[str] | None = None) -> None:
    # Opacus's hooks warn on every backward pass of an input layer; nothing to act on here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    # dp_train sets this process-wide at its first call; set here, every trainer runs under
    # the same allocator from its first round.
    kept = keep_freed_memory()
    images, labels = encode_images(*generate_pathmnist(args.batches * args.batch_size, seed=0))
    trainers = {
        "plain": _plain(images, labels, args.batch_size),
        "dp": _ours(images, labels, args.batch_size),
        "dp_unpadded": _ours(images, labels, args.batch_size, padded=False),
        "opacus_hooks": _opacus(images, labels, args.batch_size),
    }
    times, cpu = _measure(trainers, args.seconds, args.threads)
    report = _report(args, times, samples=images.shape[0])
    # The same ratios from the CPU time each trainer used (this thread's with one torch
    # thread, else the process's): time spent waiting for a core shared with other
    # processes does not count, so these move less with outside load than the wall ratios.
    report["ratio_cpu"] = round(sum(cpu["plain"]) / sum(cpu["dp"]), 3)
    report["ratio_unpadded_cpu"] = round(sum(cpu["plain"]) / sum(cpu["dp_unpadded"]), 3)
    report["kept_freed_memory"] = kept
    print(json.dumps({**report, **_noise_cost(images.shape[0] // args.batch_size)}))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--batches", type=int, default=4, help="batches per trainer per round (default 4)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.batch_size < 1 or args.threads < 1 or args.batches < 1:
        parser.error("--seconds, --batch-size, --threads and --batches must be positive.")
    return args


def _report(
    args: argparse.Namespace, times: dict[str, list[float]], *, samples: int
) -> dict[str, object]:
    """Rates over all rounds; the median per-round ratio resists bursts of outside load."""
    rates = {name: samples * len(t) / sum(t) for name, t in times.items()}
    ratio = rates["dp"] / rates["plain"]
    per_round = np.array(times["plain"]) / np.array(times["dp"])
    return {
        "benchmark": "dp_throughput",
        "model": MODEL,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rounds": len(times["dp"]),
        "plain_samples_per_s": round(rates["plain"], 1),
        "dp_samples_per_s": round(rates["dp"], 1),
        "dp_unpadded_samples_per_s": round(rates["dp_unpadded"], 1),
        "opacus_hooks_samples_per_s": round(rates["opacus_hooks"], 1),
        "ratio": round(ratio, 3),
        "ratio_median_round": round(float(np.median(per_round)), 3),
        "ratio_unpadded": round(rates["dp_unpadded"] / rates["plain"], 3),
        # A dp_train call is one epoch here: its budget over the expected rows is the padding.
        "round_budget_over_expected": round(
            batch_bound(samples * args.batches, args.batch_size / samples) / samples, 3
        ),
        "opacus_hooks_ratio": round(rates["opacus_hooks"] / rates["plain"], 3),
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def _noise_cost(steps: int) -> dict[str, float]:
    """The secure-mode noise (halved sum of four draws) against one draw per value, both
    from the ChaCha20 stream, per epoch of `steps` noised steps of this model, timed in the
    same run."""
    numel = sum(p.numel() for p in build_model(MODEL).parameters())
    stream = RandomStream()
    draws = {
        "single": lambda: stream.normal(numel).float(),
        "secure": lambda: secure_gaussian(numel, 1.0, stream),
    }
    spent = {}
    for name, draw in draws.items():
        started = time.perf_counter()
        for _ in range(steps * 20):
            draw()
        spent[name] = (time.perf_counter() - started) / 20
    return {
        "noise_s_per_epoch_single": round(spent["single"], 4),
        "noise_s_per_epoch_secure": round(spent["secure"], 4),
    }


def _measure(
    trainers: dict[str, Callable[[], None]], seconds: float, threads: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Warm up each trainer once, then run rounds (rotating order) until the budget is spent.

    Returns each trainer's wall time per round, so that rates and per-round ratios can be
    formed, and its CPU time per round.
    """
    clock = time.thread_time if threads == 1 else time.process_time
    for run in trainers.values():
        run()
    names = list(trainers)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            start, used = time.perf_counter(), clock()
            trainers[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(clock() - used)
        rounds += 1
    return times, cpu


def _plain(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Callable[[], None]:
    """One epoch of non-private SGD on shuffled fixed batches (mean loss)."""
    torch.manual_seed(0)
    model = build_model(MODEL)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    def epoch() -> None:
        for batch in torch.randperm(x.shape[0]).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()

    return epoch


def _ours(
    images: np.ndarray, labels: np.ndarray, batch_size: int, padded: bool = True
) -> Callable[[], None]:
    """One epoch of datasites.privacy.dp.dp_train (sigma = 1, C = 1); the row bound is the
    exact n here (no released size, so no margin for its noise)."""
    torch.manual_seed(0)
    model = build_model(MODEL)
    spec = TrainSpec(batch_size, LR, local_epochs=1, max_grad_norm=1.0, noise_multiplier=1.0)

    def epoch() -> None:
        dp_train(model, images, labels, spec, task="pathmnist", padded=padded)

    return epoch


def _opacus(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Callable[[], None]:
    """One epoch of Opacus' PrivacyEngine with its default hooks grad sampler."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = build_model(MODEL)
    data = TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode advice: irrelevant to a benchmark
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=LR),
            data_loader=DataLoader(data, batch_size=batch_size),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )

    def epoch() -> None:
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    return epoch


if __name__ == "__main__":
    main()
