"""Utility of federated DP studies against centralized non-private training, same data.

Usage: python benchmarks/utility.py [--scale small|full] [--hospitals 5] [--data-dir DIR]
       [--base-port 8281] [--ehr-rounds R] [--path-rounds R] ... (see --help)

One run, one data set: `launch.py --reset` generates the hospitals' data and starts their
datasites. Then, on the same rows:
- centralized: one process trains the zoo model (`ehr_mlp`, `pathmnist_cnn`) without any
  privacy (Adam, mean loss, shuffled batches, no clipping, no noise) on the union of every
  hospital's private `train` split, encoded with `datasites.contract.encoding`;
- federated: the real stack. The scientist connects, submits one EHR study (epsilon 1) and one
  PathMNIST study (epsilon 3), every hospital's operator approves them, and `study.run()`
  trains round after round with each hospital's DP-SGD runtime and FedAvg.
Both final models are scored exactly (no noise) on the union of the hospitals' private `test`
splits, read hospital-side from their source files with the split the assets use: EHR AUROC
of 30-day readmission (rank formula, ties averaged) and PathMNIST accuracy. The federated
study's own noised-count metrics are reported next to them. Progress goes to stderr; one JSON
line goes to stdout at the end. The datasites are always stopped (SIGINT to the launcher).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scoring import auroc

from datasites.contract.encoding import encode_ehr, encode_images
from datasites.contract.zoo import build_model
from datasites.server.assets import ehr_assets
from datasites.server.provision import read_manifest
from datasites.server.sources import read_ehr, read_pathmnist
from datasites.site.identity import Identity
from datasites.site.paths import HospitalConfig
from scientist.config import DPConfig
from scientist.recipes import recipe
from synthetic.populations import POPULATIONS

REPO = Path(__file__).resolve().parent.parent
EHR_TARGET_GAP = 0.02  # federated AUROC at epsilon 1 within 0.02 of centralized
# Share of the EHR train union held out to choose each centralized candidate's epoch count.
VALIDATION_SHARE = 0.15
PATH_TARGET_RATIO = 0.9  # federated accuracy at epsilon 3 >= 0.9 x centralized
EHR_EPSILON = recipe("ehr")["epsilon"]
PATH_EPSILON = recipe("pathmnist")["epsilon"]
LAUNCH_TIMEOUT = 1800.0


# Federated study hyperparameters per scale, from tuning runs of the hospitals' own DP-SGD
# (datasites.privacy.dp + the runtime's calibration) on the same synthetic data; see the README.
# momentum: the hospitals' local heavy-ball momentum (in the plan); server_momentum and
# server_lr: the scientist's FedAvgM step. Server momentum lowered both tasks in tuning.
# `model` is the federated study's zoo model when it is not the baseline's architecture
# (`hidden`/`width` describe the baseline's MLP and CNN): EHR trains ehr_logistic, whose
# fewer noised coordinates did better under DP than ehr_mlp([8]). Its lr 0.5 was tuned at
# full scale on the standardized features (datasites.contract.ehr_reference); small scale reuses it.
def recipe_settings(task: str) -> dict[str, Any]:
    """`scientist.recipes`' recipe for `task`, in this script's settings form; `hidden` and
    `width` describe the centralized baseline's MLP and CNN."""
    r = recipe(task)
    keys = ("rounds", "local_epochs", "local_steps", "batch_size", "lr", "momentum")
    settings = {key: r[key] for key in keys}
    settings |= {
        "model": r["model"],
        "max_grad_norm": DPConfig().max_grad_norm,
        "server_momentum": r["server_momentum"],
        "server_lr": r["server_lr"],
        "average_decay": r["average_decay"],
        "clip_quantile": r["clip_quantile"],
    }
    if task == "ehr":
        return settings | {"hidden": [8]}
    return settings | {"width": r["model_kwargs"]["width"]}


FEDERATED = {
    "small": {
        "ehr": dict(
            model="ehr_logistic",
            rounds=10,
            local_epochs=1,
            batch_size=512,
            lr=0.5,
            max_grad_norm=1.0,
            hidden=[8],
            momentum=0.0,
            server_momentum=0.0,
            server_lr=1.0,
        ),
        "pathmnist": dict(
            rounds=20,
            local_epochs=1,
            batch_size=256,
            lr=2.0,
            max_grad_norm=1.0,
            width=16,
            momentum=0.0,
            server_momentum=0.0,
            server_lr=1.0,
        ),
    },
    # The validated recipes, read from the one place StudyConfig reads them too.
    "full": {task: recipe_settings(task) for task in ("ehr", "pathmnist")},
}
FEDERATED_KEYS = (
    "rounds",
    "local_epochs",
    "local_steps",
    "batch_size",
    "lr",
    "max_grad_norm",
    "momentum",
    "server_momentum",
    "server_lr",
    "average_decay",
    "clip_quantile",
    "model",
)
# The non-private baseline: Adam at its usual rate. PathMNIST trains a fixed number of epochs,
# chosen where the test metric had plateaued in tuning. For EHR, `epochs` is the most each
# candidate may train: the count is chosen on a validation share of the train union
# (`validated_epochs`), because on standardized features the MLPs overfit within a few epochs
# while the logistic model is still improving.
CENTRALIZED = {
    "small": {
        "ehr": dict(epochs=30, batch_size=128, lr=1e-3),
        "pathmnist": dict(epochs=10, batch_size=128, lr=1e-3),
    },
    "full": {
        "ehr": dict(epochs=30, batch_size=256, lr=1e-3),
        "pathmnist": dict(epochs=4, batch_size=128, lr=1e-3),
    },
}


def log(message: str) -> None:
    print(f"[utility {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- arguments ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small", choices=("small", "full"))
    p.add_argument("--hospitals", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/utility-bench"))
    p.add_argument("--base-port", type=int, default=8281)
    p.add_argument("--seed", type=int, default=0, help="launch.py --seed (data and splits)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for centralized")
    p.add_argument("--tasks", default="ehr,pathmnist", help="comma list of ehr, pathmnist")
    p.add_argument(
        "--population",
        default="default",
        choices=list(POPULATIONS),
        help="synthetic EHR federation (launch.py --population)",
    )
    p.add_argument(
        "--family",
        action="store_true",
        help="EHR on every population of synthetic.populations (PathMNIST on the default)",
    )
    fed = p.add_argument_group("federated studies (defaults depend on --scale)")
    for prefix in ("ehr", "path"):
        fed.add_argument(f"--{prefix}-rounds", type=int)
        fed.add_argument(f"--{prefix}-local-epochs", type=int)
        fed.add_argument(f"--{prefix}-local-steps", type=int, help="steps per round, not epochs")
        fed.add_argument(f"--{prefix}-batch-size", type=int)
        fed.add_argument(f"--{prefix}-lr", type=float)
        fed.add_argument(f"--{prefix}-max-grad-norm", type=float)
        fed.add_argument(f"--{prefix}-momentum", type=float, help="hospitals' local momentum")
        fed.add_argument(f"--{prefix}-server-momentum", type=float, help="FedAvgM beta")
        fed.add_argument(f"--{prefix}-server-lr", type=float, help="FedAvgM server lr")
        fed.add_argument(f"--{prefix}-average-decay", type=float, help="weight average decay")
        fed.add_argument(f"--{prefix}-clip-quantile", type=float, help="adaptive clipping")
        fed.add_argument(f"--{prefix}-model", help="federated zoo model (default: the baseline's)")
    fed.add_argument("--ehr-hidden", help="ehr_mlp hidden sizes, both sides, e.g. 64,32")
    fed.add_argument("--path-width", type=int, help="pathmnist_cnn width, both sides")
    central = p.add_argument_group("centralized baseline (defaults depend on --scale)")
    for prefix in ("ehr", "path"):
        central.add_argument(f"--central-{prefix}-epochs", type=int)
        central.add_argument(f"--central-{prefix}-batch-size", type=int)
        central.add_argument(f"--central-{prefix}-lr", type=float)
    a = p.parse_args(argv)
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if not a.tasks or set(a.tasks) - {"ehr", "pathmnist"}:
        p.error("--tasks must list ehr and/or pathmnist.")
    if a.hospitals < 1 or a.threads < 1:
        p.error("--hospitals and --threads must be positive.")
    a.data_dir = a.data_dir.resolve()
    a.federated, a.centralized = _settings(a)
    # At full scale a task with no federated flag runs `StudyConfig(task=...)` as it is: the
    # default a user gets is what this benchmark measures.
    a.default_study = {
        task: a.scale == "full" and a.federated[task] == FEDERATED["full"][task]
        for task in ("ehr", "pathmnist")
    }
    return a


def _settings(a: argparse.Namespace) -> tuple[dict[str, dict], dict[str, dict]]:
    federated = {task: dict(values) for task, values in FEDERATED[a.scale].items()}
    centralized = {task: dict(values) for task, values in CENTRALIZED[a.scale].items()}
    for task, prefix in (("ehr", "ehr"), ("pathmnist", "path")):
        for key in FEDERATED_KEYS:
            value = getattr(a, f"{prefix}_{key}")
            if value is not None:
                federated[task][key] = value
        for key in ("epochs", "batch_size", "lr"):
            value = getattr(a, f"central_{prefix}_{key}")
            if value is not None:
                centralized[task][key] = value
    if a.ehr_hidden:
        federated["ehr"]["hidden"] = [int(s) for s in a.ehr_hidden.split(",")]
    if a.path_width:
        federated["pathmnist"]["width"] = a.path_width
    return federated, centralized


def model_kwargs(task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The centralized baseline's architecture: ehr_mlp(hidden) or pathmnist_cnn(width)."""
    if task == "ehr":
        return {"hidden": list(settings["hidden"])}
    return {"width": int(settings["width"])}


def federated_model(task: str, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The federated study's zoo model: the baseline's architecture unless `model` says."""
    name = settings.get("model") or ("ehr_mlp" if task == "ehr" else "pathmnist_cnn")
    if name == "ehr_logistic":  # the recipe's arguments when it trains this model
        r = recipe(task)
        return name, dict(r["model_kwargs"]) if r["model"] == name else {}
    return name, model_kwargs(task, settings)


# --- the hospitals' datasites ---------------------------------------------------------------------


class Launch:
    """`launch.py` as a subprocess in its own process group; stopped with SIGINT."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        a = self.args
        command = [
            sys.executable,
            "-u",
            str(REPO / "launch.py"),
            "--hospitals",
            str(a.hospitals),
            "--scale",
            a.scale,
            "--base-port",
            str(a.base_port),
            "--data-dir",
            str(a.data_dir),
            "--seed",
            str(a.seed),
            "--population",
            a.population,
            "--reset",
        ]
        log("starting: " + " ".join(command[2:]))
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not ready.wait(1.0):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"launch.py exited with {self.process.returncode} before ready: "
                    + " | ".join(self.tail)
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"launch.py not ready after {LAUNCH_TIMEOUT:.0f} s.")

    def _read(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            print(f"  [launch] {line}", file=sys.stderr, flush=True)
            if line.startswith("ready:"):
                ready.set()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        log("stopping the datasites (SIGINT to launch.py) ...")
        for sig, wait in ((signal.SIGINT, 120), (signal.SIGTERM, 30)):
            try:
                process.send_signal(sig)
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        else:  # the launcher hangs: end its whole group (only processes we started)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        log(f"launch.py exited with {process.returncode}")


# --- the hospitals' private data, read hospital-side ---------------------------------------------


def hospital_configs(data_dir: Path) -> list[HospitalConfig]:
    entries = json.loads((data_dir / "federation.json").read_text())["hospitals"]
    return [
        HospitalConfig(name=e["name"], port=int(e["url"].rsplit(":", 1)[1]), data_dir=data_dir)
        for e in entries
    ]


def private_data(data_dir: Path, tasks: list[str]) -> dict[str, dict[str, list]]:
    """Each hospital's private train and test splits, as its assets hold them.

    EHR: the source table through `ehr_assets` with each hospital's split key (patient-disjoint
    keyed split, one encounter per patient); images: the source npz's train and test. Row counts are
    checked against the manifest of what each datasite uploaded.
    """
    out: dict[str, dict[str, list]] = {t: {"train": [], "test": []} for t in tasks}
    for config in hospital_configs(data_dir):
        manifest = read_manifest(config)
        splits: dict[str, dict[str, Any]] = {}
        if "ehr" in tasks:
            key = Identity.load_or_create(config.identity_path, config.name).split_key_bytes
            pairs = {p.name: p.private for p in ehr_assets(read_ehr(config), config.name, key)}
            splits["ehr"] = {s: encode_ehr(pairs[s]) for s in ("train", "test")}
            rows = {s: len(pairs[s]) for s in ("train", "test")}
            _check_rows(config.name, "ehr", rows, manifest)
        if "pathmnist" in tasks:
            images = read_pathmnist(config)
            splits["pathmnist"] = {s: encode_images(*images[s]) for s in ("train", "test")}
            rows = {s: len(images[s][1]) for s in ("train", "test")}
            _check_rows(config.name, "pathmnist", rows, manifest)
        for task, parts in splits.items():
            for split, value in parts.items():
                out[task][split].append(value)
    return out


def _check_rows(hospital: str, dataset: str, rows: dict[str, int], manifest: dict) -> None:
    hosted = {s: manifest.get(dataset, {}).get(s, {}).get("rows") for s in rows}
    if hosted != rows:
        raise RuntimeError(
            f"{hospital} {dataset}: rows read here {rows} differ from what its datasite "
            f"uploaded {hosted}; the split does not match the assets."
        )


def union(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --- exact evaluation -----------------------------------------------------------------------------


def predict(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        chunks = [
            model(torch.from_numpy(features[i : i + 4096])) for i in range(0, len(features), 4096)
        ]
    return torch.cat(chunks).numpy()


def exact_metric(task: str, model: torch.nn.Module, test: tuple[np.ndarray, np.ndarray]) -> float:
    """EHR: AUROC of the logit; PathMNIST: accuracy of the argmax."""
    features, labels = test
    out = predict(model, features)
    if task == "ehr":
        return auroc(out.reshape(-1), labels)
    return float((out.argmax(1) == labels).mean())


def binned_auroc(model: torch.nn.Module, test: tuple[np.ndarray, np.ndarray]) -> float:
    """The AUROC the hospitals' evaluation release would give without its noise: ten bins at
    quantiles of the predictions (as the study picks them from the mocks) and the scientist's
    formula. It tells how much of the gap between the noised and the exact AUROC is binning,
    how much noise."""
    from datasites.contract.release import binary_counts
    from scientist.bins import THRESHOLD, quantile_edges
    from scientist.metrics import binary_metrics

    features, labels = test
    probs = torch.sigmoid(torch.from_numpy(predict(model, features).reshape(-1))).numpy()
    edges = quantile_edges(probs, threshold=THRESHOLD)
    return binary_metrics(binary_counts(probs, labels, edges), edges=edges)["auroc"]


# --- centralized, non-private --------------------------------------------------------------------


def centralized(
    task: str,
    model_name: str,
    kwargs: dict[str, Any],
    settings: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    seed: int,
    on_epoch: Callable[[torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Plain training on the union: Adam, mean loss, shuffled batches, no clipping or noise.
    `on_epoch` sees the model after every epoch (in eval mode)."""
    torch.manual_seed(seed)
    model = build_model(model_name, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    x = torch.from_numpy(train[0])
    y = torch.from_numpy(train[1].astype(np.float32 if task == "ehr" else np.int64))
    generator = torch.Generator().manual_seed(seed)
    batch = settings["batch_size"]
    for epoch in range(settings["epochs"]):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            out = model(x[idx])
            if task == "ehr":
                loss = F.binary_cross_entropy_with_logits(out[:, 0], y[idx])
            else:
                loss = F.cross_entropy(out, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        log(
            f"  centralized {task} epoch {epoch + 1}/{settings['epochs']}: "
            f"train loss {total / len(y):.4f}"
        )
        if on_epoch is not None:
            on_epoch(model.eval())
    return model.eval()


def validated_epochs(
    task: str,
    model_name: str,
    kwargs: dict[str, Any],
    settings: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> int:
    """The epoch count (up to settings["epochs"]) with the best metric on a validation share
    held out of the train union: the baseline stops where it would stop in practice, and
    the test split is never looked at to choose it."""
    held = np.random.default_rng(seed).random(len(train[1])) < VALIDATION_SHARE
    fit = (train[0][~held], train[1][~held])
    validation = (train[0][held], train[1][held])
    scores: list[float] = []

    def score(model: torch.nn.Module) -> None:
        scores.append(exact_metric(task, model, validation))

    centralized(task, model_name, kwargs, settings, fit, seed, on_epoch=score)
    return int(np.argmax(scores)) + 1


def ehr_baselines(
    settings: dict[str, Any],
    federated_settings: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Every centralized EHR candidate, each trained on the whole train union for its
    validated number of epochs: the baseline's MLP, the zoo's default MLP and the federated
    study's own model. The target gap is taken against the strongest of them."""
    mlp = model_kwargs("ehr", federated_settings)
    candidates = {
        f"ehr_mlp{mlp['hidden']}": ("ehr_mlp", mlp),
        "ehr_mlp (zoo default)": ("ehr_mlp", {}),
    }
    same = federated_model("ehr", federated_settings)
    if same not in candidates.values():
        candidates[f"{same[0]} (the federated model)"] = same
    out = {}
    for label, (name, kwargs) in candidates.items():
        epochs = validated_epochs("ehr", name, kwargs, settings, train, seed)
        model = centralized("ehr", name, kwargs, {**settings, "epochs": epochs}, train, seed)
        out[label] = {"auroc": exact_metric("ehr", model, test), "epochs": epochs}
        log(f"centralized ehr, {label}: {out[label]['auroc']:.4f} after {epochs} epochs")
    return out


# --- federated, through the real stack ------------------------------------------------------------


def federated(
    fed: Any,
    operators: dict[str, Any],
    task: str,
    settings: dict[str, Any],
    epsilon: float,
    data_dir: Path,
    seed: int,
    default: bool = False,
) -> dict[str, Any]:
    """Submit, approve at every hospital, run; the result and what each hospital charged.
    `default`: submit `StudyConfig(task=task)` itself (the validated recipe) instead of
    `settings`."""
    from datasites.privacy.ledger import Ledger

    config = default_config(task, seed) if default else study_config(task, settings, epsilon, seed)
    study = fed.submit(config)
    for hospital, request_id in study.requests.items():
        operators[hospital].approve(request_id)
    log(f"  {task} study {study.id} approved at {len(study.requests)} hospitals; running")
    started = time.perf_counter()

    def on_round(entry: dict[str, Any]) -> None:
        # Called as round r completes: its training and, if due, its (noised) evaluation.
        shown = f"  {task} round {entry['round']}/{config.rounds}"
        if entry.get("epsilon") is not None:
            shown += f": epsilon {entry['epsilon']:.3f}"
        metrics = entry.get("metrics") or {}
        for key in ("auroc", "accuracy", "loss"):
            if key in metrics:
                shown += f", noised {key} {metrics[key]:.4f}"
        log(f"{shown} ({time.perf_counter() - started:.0f} s)")

    result = study.run(progress=False, on_round=on_round)
    seconds = time.perf_counter() - started
    sigmas = {}
    for hospital in study.requests:
        record = Ledger(data_dir / hospital / "ledger.sqlite").study(study.id)
        sigmas[hospital] = round(record.noise_multiplier, 3) if record else None
    return {
        "result": result,
        "seconds": seconds,
        "noise_multipliers": sigmas,
        "epsilon_spent": max(h.get("epsilon", 0.0) for h in result.rounds),
        "study_config": config.to_dict(),
    }


def default_config(task: str, seed: int) -> Any:
    from scientist import StudyConfig

    return StudyConfig(task=task, seed=seed)


def study_config(task: str, settings: dict[str, Any], epsilon: float, seed: int) -> Any:
    """The study of `settings` (a scale's defaults and the command line's flags)."""
    from scientist import DPConfig, StudyConfig

    model, kwargs = federated_model(task, settings)
    return StudyConfig(
        task=task,
        model=model,
        model_kwargs=kwargs,
        rounds=settings["rounds"],
        local_epochs=settings["local_epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        dp=DPConfig(epsilon=epsilon, max_grad_norm=settings["max_grad_norm"]),
        eval_every=settings["rounds"],  # evaluate the initial and the final model only
        seed=seed,
        momentum=settings["momentum"],
        server_lr=settings["server_lr"],
        server_momentum=settings["server_momentum"],
        local_steps=settings.get("local_steps", 0),
        average_decay=settings.get("average_decay", 0.0),
        clip_quantile=settings.get("clip_quantile", 0.0),
    )


# --- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, seconds: dict[str, float]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    launch = Launch(args)
    report: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        launch.start()
        seconds["launch"] = time.perf_counter() - started

        mark = time.perf_counter()
        data = private_data(args.data_dir, args.tasks)
        seconds["read_private_data"] = time.perf_counter() - mark
        tests = {task: union(data[task]["test"]) for task in args.tasks}
        trains = {task: union(data[task]["train"]) for task in args.tasks}
        for task in args.tasks:
            log(
                f"{task}: {len(trains[task][1]):,} train and {len(tests[task][1]):,} test rows "
                f"over {len(data[task]['train'])} hospitals"
            )

        central_metrics: dict[str, Any] = {}
        for task in args.tasks:
            log(f"centralized {task}: {args.centralized[task]}")
            mark = time.perf_counter()
            if task == "ehr":
                candidates = ehr_baselines(
                    args.centralized["ehr"],
                    args.federated["ehr"],
                    trains["ehr"],
                    tests["ehr"],
                    args.seed,
                )
                central_metrics["ehr_candidates"] = candidates
                central_metrics["ehr"] = max(c["auroc"] for c in candidates.values())
            else:
                kwargs = model_kwargs(task, args.federated[task])
                model = centralized(
                    task, "pathmnist_cnn", kwargs, args.centralized[task], trains[task], args.seed
                )
                central_metrics[task] = exact_metric(task, model, tests[task])
            seconds[f"centralized_{task}"] = time.perf_counter() - mark
            log(f"centralized {task}: {central_metrics[task]:.4f}")

        from datasites.governance.operator import Operator
        from scientist import Federation

        workdir = args.data_dir / "utility-studies"
        shutil.rmtree(workdir, ignore_errors=True)
        fed = Federation.connect(args.data_dir, workdir=workdir)
        operators = {h: Operator.open(args.data_dir, h) for h in fed.hospitals}
        for task in args.tasks:
            epsilon = EHR_EPSILON if task == "ehr" else PATH_EPSILON
            log(f"federated {task}: {args.federated[task]}, epsilon {epsilon}")
            outcome = federated(
                fed,
                operators,
                task,
                args.federated[task],
                epsilon,
                args.data_dir,
                args.seed,
                default=args.default_study[task],
            )
            seconds[f"federated_{task}"] = outcome["seconds"]
            exact = exact_metric(task, outcome["result"].model, tests[task])
            if task == "ehr":
                outcome["binned_auroc"] = binned_auroc(outcome["result"].model, tests[task])
            log(f"federated {task}: exact {exact:.4f} in {outcome['seconds']:.0f} s")
            report[task] = task_report(
                task,
                args,
                central_metrics,
                exact,
                outcome,
                len(trains[task][1]),
                len(tests[task][1]),
            )
    finally:
        launch.stop()
    return report


def task_report(
    task: str,
    args: argparse.Namespace,
    central: dict[str, float],
    exact: float,
    outcome: dict[str, Any],
    n_train: int,
    n_test: int,
) -> dict[str, Any]:
    noised = outcome["result"].metrics
    common = {
        "epsilon": EHR_EPSILON if task == "ehr" else PATH_EPSILON,
        "epsilon_spent": round(outcome["epsilon_spent"], 4),
        "noise_multipliers": outcome["noise_multipliers"],
        "train_rows": n_train,
        "test_rows": n_test,
        "federated_hyperparameters": args.federated[task],
        "default_study_config": bool(args.default_study[task]),
        "study_config": outcome["study_config"],
        "centralized_hyperparameters": {
            **args.centralized[task],
            "optimizer": "adam",
            **({"epochs_chosen_on": f"{VALIDATION_SHARE:.0%} of train"} if task == "ehr" else {}),
        },
        "noised_count_std": _round(noised.get("count_noise_std")),
    }
    if task == "ehr":
        gap = central["ehr"] - exact
        out = {
            "centralized_auroc": _round(central["ehr"]),
            "federated_auroc": _round(exact),
            "federated_noised_auroc": _round(noised.get("auroc")),
            "federated_binned_auroc_without_noise": _round(outcome["binned_auroc"]),
            "gap": _round(gap),
            "target_gap": EHR_TARGET_GAP,
            "met": bool(gap <= EHR_TARGET_GAP),
        }
        out["centralized_candidates"] = {
            label: {"auroc": _round(c["auroc"]), "epochs": c["epochs"]}
            for label, c in central["ehr_candidates"].items()
        }
        return {**out, **common}
    ratio = exact / central["pathmnist"]
    return {
        "centralized_accuracy": _round(central["pathmnist"]),
        "federated_accuracy": _round(exact),
        "federated_noised_accuracy": _round(noised.get("accuracy")),
        "ratio": _round(ratio),
        "target_ratio": PATH_TARGET_RATIO,
        "met": bool(ratio >= PATH_TARGET_RATIO),
        **common,
    }


def _round(value: Any) -> Any:
    return round(float(value), 4) if value is not None else None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def members(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One run per population: `--family` runs EHR on every member (with that member's
    number of hospitals) and PathMNIST, if asked, on the default only."""
    if not args.family:
        return [args]
    runs = []
    for name, population in POPULATIONS.items():
        tasks = [t for t in args.tasks if t == "ehr" or name == "default"]
        if tasks:
            runs.append(
                argparse.Namespace(
                    **vars(args)
                    | {"population": name, "tasks": tasks, "hospitals": population.hospitals_count}
                )
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so that the datasites are stopped
    for member in members(args):
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        try:
            report = run(member, seconds)
        except KeyboardInterrupt:
            log("interrupted; the datasites were stopped.")
            return 130
        seconds["total"] = time.perf_counter() - started
        line = {
            "benchmark": "utility",
            "scale": member.scale,
            "population": member.population,
            "hospitals": member.hospitals,
            **report,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
