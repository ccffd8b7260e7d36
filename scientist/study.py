"""A federated study: submitted once, approved once per hospital, run round after round.

Round r sends the global weights after round r - 1 to every approving hospital at once.
Each hospital evaluates them if an evaluation is due (noised counts) and trains round r
(DP-SGD in its own runtime); the scientist averages the returned weights (FedAvg, or
FedAvgM with the config's server momentum) and sums the counts into metrics. Call
rounds + 1 only evaluates the final model. A checkpoint is written after every call, so
`Federation.resume` continues at the next call and redoes nothing: a hospital asked again
for a round it completed returns its recorded result.

A hospital that stops answering (connection refused or reset, or no answer within the
federation's read timeout) drops out of the call: it is named in a `HospitalDropped`
warning and in the round's `dropped`, and the round completes without it while at least
`min_hospitals` answered (a secure round: its threshold). Each later call first probes it
quickly and calls it again once it answers, so it rejoins. A hospital's own refusal (an
error it returns) is a decision, not a fault, and stops the study as before.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from datasites.contract.plan import Plan
from datasites.contract.syft_io import APPROVED, CALL_AGAIN, DENIED, PENDING, request_status
from datasites.contract.zoo import build_model, model_weights
from scientist.bins import MockScorer, bins_for
from scientist.checkpoint import Checkpoint
from scientist.config import StudyConfig
from scientist.connect import FederationError, network_reason
from scientist.fedavg import fedavgm, weight_average
from scientist.intervals import binary_intervals, multiclass_intervals
from scientist.metrics import binary_metrics, multiclass_metrics
from scientist.phase_calls import is_light, light_call
from scientist.result import StudyResult, facts_html, names_text
from scientist.secure_round import SecureOutcome, SecureRelay, SecureRoundError
from scientist.study_code import function_name

if TYPE_CHECKING:
    from scientist.pool import HospitalPool


class StudyError(FederationError):
    """A study could not go on; the message names the hospital and the reason."""


class HospitalDropped(UserWarning):
    """A hospital did not answer a call; the round went on without it."""


UNREACHABLE = "unreachable"  # a reply's mark: the hospital did not answer
# A reply's mark: it answered that an earlier call (one the scientist gave up waiting for)
# is computing this release (`CALL_AGAIN`): not a refusal, the next round asks again.
BUSY = "busy"


def initial_weights(config: StudyConfig) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(config.seed)
    return model_weights(build_model(config.model, **config.model_kwargs))


def summed_metrics(task: str, released: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of the global model from the hospitals' noised releases, summed.

    The test loss divides the summed noised loss by the summed noised counts: hospitals
    never release their exact test sizes.
    """
    counts = [r["counts"] for r in released]
    edges = [r.get("edges") for r in released]
    if any(not np.array_equal(e, edges[0]) for e in edges):
        raise StudyError("hospitals binned this evaluation differently; it cannot be summed.")
    # The std of the noise on each summed count: how far to trust these metrics.
    noise_std = float(np.sqrt(sum(r["noise_std"] ** 2 for r in released)))
    if task == "ehr":
        hist = np.sum([np.asarray(c) for c in counts], axis=0)
        metrics = binary_metrics(hist, edges=edges[0])
        intervals = binary_intervals(hist, noise_std, edges=edges[0])
        total = float(np.clip(hist, 0, None).sum())
    else:
        confusion = np.sum([c["confusion"] for c in counts], axis=0)
        ovr = np.sum([c["ovr"] for c in counts], axis=0)
        metrics = multiclass_metrics(confusion, ovr)
        intervals = multiclass_intervals(confusion, ovr, noise_std)
        total = float(np.clip(confusion, 0, None).sum())
    metrics["loss"] = sum(r["loss_sum"] for r in released) / max(total, 1.0)
    metrics["count_noise_std"] = noise_std
    # 95% intervals from the published noise (scientist.intervals): {metric: [low, high]}.
    metrics["intervals"] = intervals
    return metrics


class Study:
    """A submitted study; `status()` shows each hospital's decision, `run()` trains."""

    def __init__(
        self,
        pool: HospitalPool,
        study_id: str,
        config: StudyConfig,
        requests: dict[str, str],
        folder: Path,
        partners: dict[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.id = study_id
        self.config = config
        self.requests = requests
        self.folder = folder
        # A secure study's partners (hospital -> datasite verify key), as its plan names them.
        self.partners = partners or {}
        self._endpoints: dict[str, tuple[Any, Any]] = {}
        self._scorer: MockScorer | None = None
        # Hospitals whose last call failed on the network: probed before the next one.
        self._silent: set[str] = set()
        self._reported: set[tuple[int, str]] = set()
        # Hospitals without the light-phase route (older datasites): syft calls only.
        self._no_route: set[str] = set()

    @property
    def function(self) -> str:
        return function_name(self.id)

    def __repr__(self) -> str:
        """One line from what the scientist holds locally: a repr never calls a hospital
        (use `status()` for their decisions)."""
        return (
            f"Study({self.id!r}, {self.config.model} on {self.config.task}, "
            f"{len(self.requests)} hospitals: {names_text(list(self.requests))})"
        )

    def _repr_html_(self) -> str:
        config = self.config
        facts = {
            "model": f"{config.model} on {config.task}",
            "rounds": config.rounds,
            "epsilon per hospital": config.dp.epsilon,
            "checkpoints": self.folder,
        }
        facts.update({f"request at {h}": request for h, request in self.requests.items()})
        return facts_html(f"study {self.id}", facts)

    def status(self) -> pd.DataFrame:
        """Per hospital: pending, approved or denied (with the operator's reason)."""
        rows = self.pool.map(self._status_of, list(self.requests))
        return pd.DataFrame(rows, columns=["hospital", "status", "reason"])

    def _status_of(self, hospital: str, client: Any) -> dict[str, str]:
        """One hospital's decision; `unreachable` (with why) when it does not answer: a
        quick probe first, so a silent hospital costs seconds, not a read timeout."""
        reason = self.pool.unanswered(hospital)
        try:
            requests = list(client.requests) if reason is None else []
        except Exception as error:
            reason = network_reason(error, self.pool.network)
            if reason is None:
                raise
        if reason is not None:
            return {"hospital": hospital, "status": UNREACHABLE, "reason": reason}
        for request in requests:
            if str(request.id) == self.requests[hospital]:
                status = request_status(request)
                reason = request.deny_reason if status == DENIED else ""
                return {
                    "hospital": hospital,
                    "status": status,
                    "reason": reason if isinstance(reason, str) else "",
                }
        return {"hospital": hospital, "status": PENDING, "reason": "request not found"}

    def wait_for_approval(self, timeout: float, poll: float = 2.0) -> pd.DataFrame:
        """Poll until no hospital is pending or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            table = self.status()
            if not (table["status"] == PENDING).any() or time.monotonic() >= deadline:
                return table
            time.sleep(poll)

    def _approved(self) -> tuple[list[str], dict[str, str]]:
        table = self.status()
        approved = table.loc[table["status"] == APPROVED, "hospital"].tolist()
        excluded = {
            r.hospital: f"{r.status}: {r.reason}".rstrip(": ")
            for r in table.itertuples()
            if r.status != APPROVED
        }
        # One that did not answer is probed, not waited for, until it does (`_rejoin`).
        self._silent.update(h for h, why in excluded.items() if why.startswith(UNREACHABLE))
        if len(approved) < self.config.min_hospitals:
            detail = "; ".join(f"{h} {why}" for h, why in excluded.items())
            raise StudyError(
                f"study {self.id} has {len(approved)} approving hospitals, fewer than "
                f"min_hospitals={self.config.min_hospitals} ({detail}); wait for the operators "
                "or lower min_hospitals."
            )
        return approved, excluded

    def run(
        self, *, progress: bool = True, on_round: Callable[[dict[str, Any]], None] | None = None
    ) -> StudyResult:
        """Run (or continue) the study on every approving hospital; return the result.

        `on_round(entry)`, if given, is called as each round completes, with its history
        entry (the dict `StudyResult.rounds` holds), once its checkpoint is on disk: a
        notebook or the command line can show each round as it lands, and a callback that
        raises stops the study without losing the round.
        """
        approved, excluded = self._approved()
        state = Checkpoint.load(self.folder) or Checkpoint(1, initial_weights(self.config))
        last_call = self.config.rounds + 1
        bar = _progress(progress, last_call, state.next_round - 1, self.id)
        due = self._plan().eval_rounds()
        relay = self._relay(last_call, bar) if self.config.secure else None
        while state.next_round <= last_call:
            self._rejoin(approved, excluded)
            weights = self._sent_weights(state, last_call)
            due_now = state.next_round - 1 in due
            edges = self._edges(approved, weights, state.history) if due_now else None
            if relay is not None:
                self._absorb_secure(state, self._secure_call(relay, state, weights, edges))
            else:
                replies, dropped = self._call(approved, state.next_round, weights, edges)
                self._absorb(state, replies, dropped)
            self._report_dropped(state, bar)
            complete_call(state, self.folder, on_round)
            _advance(bar, state.history)
        if bar is not None:
            bar.close()
        final = state.average or state.weights
        return StudyResult(self.id, self.config.to_dict(), final, state.history, approved, excluded)

    def _sent_weights(self, state: Checkpoint, last_call: int) -> dict[str, np.ndarray]:
        """What a call sends: the global weights, except that the last call (evaluation
        only) sends their running average when the study keeps one."""
        if state.next_round >= last_call and state.average:
            return state.average
        return state.weights

    def _rejoin(self, approved: list[str], excluded: dict[str, str]) -> None:
        """Take back a hospital that was unreachable when the run began, once it answers
        and its operator has approved: it joins from this call on."""
        waiting = [h for h, why in excluded.items() if why.startswith(UNREACHABLE)]
        for hospital in waiting:
            row = self._status_of(hospital, self.pool.client(hospital))
            if row["status"] == APPROVED:
                del excluded[hospital]
                approved.append(hospital)
                approved.sort(key=list(self.requests).index)
            elif row["status"] != UNREACHABLE:
                excluded[hospital] = f"{row['status']}: {row['reason']}".rstrip(": ")

    def _edges(self, hospitals: list[str], weights: dict, history: list[dict]) -> list | None:
        """Bin edges for evaluating `weights`: quantiles of its predictions on the mocks
        (public, so free), as many as the last evaluation's noised positives and noise sd
        make readable (`bins_for`); None leaves the hospitals' fixed default bins."""
        if self._scorer is None:
            answering = [h for h in hospitals if h not in self._silent]
            try:
                mocks = self.pool.mock(self.config.task, "test", hospitals=answering)
            except FederationError:
                mocks = {}
            self._scorer = MockScorer(self.config, mocks)
        return self._scorer.edges(weights, _readable_bins(history))

    def _call(
        self, hospitals: list[str], round_: int, weights: dict, edges: list | None = None
    ) -> tuple[dict[str, dict], dict[str, str]]:
        """Call `round_` at every hospital: the replies of those that answered, and why
        each one that did not answer dropped out (a refusal stops the study instead)."""
        payload: dict[str, Any] = {"round": round_, "weights": weights}
        if edges is not None:
            payload["edges"] = edges
        replies = self._call_hospitals({h: payload for h in hospitals})
        failed = [r for r in replies.values() if "error" in r and not _dropped(r)]
        if failed:
            raise StudyError(
                f"round {round_} of study {self.id} failed at "
                + "; ".join(f"{r['hospital']}: {r['error']}" for r in failed)
                + f" (the checkpoint is kept: fed.resume({self.id!r}) continues here)."
            )
        dropped = {h: r["error"] for h, r in replies.items() if "error" in r}
        answered = {h: r for h, r in replies.items() if "error" not in r}
        if len(answered) < self.config.min_hospitals:
            raise StudyError(
                f"round {round_} of study {self.id} has {len(answered)} answering hospitals, "
                f"fewer than min_hospitals={self.config.min_hospitals} ("
                + "; ".join(f"{h} {why}" for h, why in dropped.items())
                + f"); the checkpoint is kept: fed.resume({self.id!r}) continues here once "
                "they answer."
            )
        return answered, dropped

    def _call_hospitals(self, requests: dict[str, dict]) -> dict[str, dict]:
        """Each hospital's reply to its request, in parallel. One that failed on the
        network last time is probed first and, while it does not answer, skipped at once
        (a reply with `error` and `unreachable`) rather than waited for."""

        def one(hospital: str, client: Any) -> dict[str, Any]:
            if hospital in self._silent:
                reason = self.pool.unanswered(hospital)
                if reason is not None:
                    return {"hospital": hospital, "error": reason, UNREACHABLE: True}
            payload = requests[hospital]
            if self._light(hospital, payload):
                return self._light_one(hospital, client, payload)
            return self._call_one(hospital, client, payload)

        names = list(requests)
        replies = dict(zip(names, self.pool.map(one, names), strict=True))
        for hospital, reply in replies.items():
            if reply.get(UNREACHABLE):
                self._silent.add(hospital)
            elif "error" not in reply:
                self._silent.discard(hospital)
        return replies

    def _plan(self) -> Plan:
        """The study's plan as the hospitals read it (with a placeholder scientist)."""
        return Plan.from_dict(self.config.plan(self.id, "-", self.partners or None))

    def _relay(self, last_call: int, bar: Any) -> SecureRelay:
        """The relay of this run's secure calls (a partner that did not approve, or fails,
        drops out of a round while the threshold holds)."""

        return SecureRelay(self._call_hospitals, self._plan(), last_call, _phase_shown(bar))

    def _secure_call(
        self, relay: SecureRelay, state: Checkpoint, weights: dict, edges: list | None
    ) -> SecureOutcome:
        try:
            return relay.call(state.next_round, weights, edges)
        except SecureRoundError as error:
            raise StudyError(
                f"{error} The checkpoint is kept: fed.resume({self.id!r}) continues here once "
                "enough hospitals answer."
            ) from None

    def _absorb_secure(self, state: Checkpoint, outcome: SecureOutcome) -> None:
        """The secure round's sums: one weighted average and one set of summed counts."""
        round_ = state.next_round
        if outcome.counts is not None:
            released = {
                "counts": outcome.counts,
                "loss_sum": outcome.loss_sum,
                "noise_std": outcome.noise_std,
                "edges": outcome.edges,
            }
            metrics = _plain(summed_metrics(self.config.task, [released]))
            entry = _entry(state.history, round_ - 1)
            entry.update(metrics=metrics, loss=metrics["loss"], edges=_plain(outcome.edges))
        if outcome.average is not None:
            self._aggregate(state, [(outcome.average, outcome.n)])
            entry = _entry(state.history, round_)
            entry["hospitals"] = outcome.epsilon
            entry["n"] = outcome.n
        entry = _entry(state.history, min(round_, self.config.rounds))
        entry["epsilon"] = max(e["epsilon_study"] for e in outcome.epsilon.values())
        _record_who(entry, outcome.contributors, outcome.average is not None, outcome.dropped)

    def _endpoint(self, hospital: str, client: Any) -> tuple[Any, Any]:
        """The study's function and the hospital's assets, looked up once: fetching a
        dataset's pointers is a server round trip that costs about a second."""
        if hospital not in self._endpoints:
            assets = client.datasets[self.config.task].assets
            self._endpoints[hospital] = (getattr(client.code, self.function), assets)
        return self._endpoints[hospital]

    def _call_one(self, hospital: str, client: Any, payload: dict) -> dict[str, Any]:
        """One syft call; a failure is a reply with `error` (and `unreachable` when the
        hospital did not answer, rather than refused)."""
        try:
            function, assets = self._endpoint(hospital, client)
            result = function(
                train=assets["train"], test=assets["test"], weights=payload, blocking=True
            )
            value = result.get() if hasattr(result, "get") else result
        except Exception as error:  # syft's own refusals (not approved), or the network
            reason = network_reason(error, self.pool.network)
            if reason is not None:
                return {"hospital": hospital, "error": reason, UNREACHABLE: True}
            return _failure(hospital, _syft_message(error))
        if not isinstance(value, dict):
            return _failure(hospital, _syft_message(value))
        value.setdefault("hospital", hospital)
        return value

    def _light(self, hospital: str, payload: dict) -> bool:
        """Whether this call goes over the hospital's light-phase route (`phase_calls`)."""
        batch = payload.get("batch")
        return (
            hospital in self.partners
            and hospital not in self._no_route
            and isinstance(batch, list)
            and is_light(batch)
        )

    def _light_one(self, hospital: str, client: Any, payload: dict) -> dict[str, Any]:
        """A secure round's light phases in one signed HTTP call; failures as `_call_one`'s."""
        try:
            value = light_call(client, self.partners[hospital], self.id, payload)
        except Exception as error:
            reason = network_reason(error, self.pool.network)
            if reason is not None:
                return {"hospital": hospital, "error": reason, UNREACHABLE: True}
            return _failure(hospital, _syft_message(error))
        if value is None:  # no such route there: this and later light phases go through syft
            self._no_route.add(hospital)
            return self._call_one(hospital, client, payload)
        value.setdefault("hospital", hospital)
        return value

    def _aggregate(self, state: Checkpoint, updates: list[tuple[dict, int]]) -> None:
        """The server step: FedAvg(M) of (weights, n) updates, then the running average."""
        state.weights, state.momentum = fedavgm(
            state.weights,
            updates,
            state.momentum,
            server_lr=self.config.server_lr,
            server_momentum=self.config.server_momentum,
        )
        if self.config.average_decay:
            state.average = weight_average(state.average, state.weights, self.config.average_decay)

    def _absorb(
        self, state: Checkpoint, replies: dict[str, dict], dropped: dict[str, str] | None = None
    ) -> None:
        round_ = state.next_round
        released = [r["evaluation"] for r in replies.values() if "evaluation" in r]
        if released:
            metrics = _plain(summed_metrics(self.config.task, released))
            entry = _entry(state.history, round_ - 1)
            entry["metrics"] = metrics
            entry["loss"] = metrics["loss"]
            entry["edges"] = _plain(released[0].get("edges"))
        trained = {h: r["train"] for h, r in replies.items() if "train" in r}
        if trained:
            self._aggregate(state, [(t["weights"], t["n"]) for t in trained.values()])
            n = sum(t["n"] for t in trained.values())
            entry = _entry(state.history, round_)
            entry["hospitals"] = {
                h: {
                    "n": t["n"],
                    "epsilon_study": replies[h]["epsilon_study"],
                    "epsilon_total": replies[h]["epsilon_total"],
                }
                for h, t in trained.items()
            }
            entry["n"] = n
        spent = max(r["epsilon_study"] for r in replies.values())
        entry = _entry(state.history, min(round_, self.config.rounds))
        entry["epsilon"] = spent
        who = (
            sorted(trained) if trained else sorted(h for h in replies if "evaluation" in replies[h])
        )
        _record_who(entry, who, bool(trained), dropped or {})

    def _report_dropped(self, state: Checkpoint, bar: Any) -> None:
        """Name, once per call, every hospital that dropped out of it: a warning (a
        notebook shows it under the cell) and the progress line."""
        round_ = min(state.next_round, self.config.rounds)
        dropped = _entry(state.history, round_).get("dropped") or {}
        fresh = {h: why for h, why in dropped.items() if (round_, h) not in self._reported}
        for hospital, why in fresh.items():
            self._reported.add((round_, hospital))
            warnings.warn(
                f"round {round_} of study {self.id}: {hospital} {why}; the round "
                "went on without it, and it is asked again next round.",
                HospitalDropped,
                stacklevel=3,
            )
        if bar is not None:
            shown = f" [without {', '.join(sorted(dropped))}]" if dropped else ""
            bar.set_description_str(f"{self.id}{shown}")


def complete_call(
    state: Checkpoint, folder: Path, on_round: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    """Close a call whose replies `state` has absorbed: advance to the next call, save the
    checkpoint, then pass the round the call completed to `on_round` and return it.

    Call r completes round r - 1: its training came back in the previous call and its
    evaluation (if due) in this one. The checkpoint is saved first so that whatever the
    callback does, even raise, the round is kept and `Federation.resume` goes on after it.
    """
    state.next_round += 1
    state.save(folder)
    completed = _entry(state.history, state.next_round - 2)
    if on_round is not None:
        on_round(completed)
    return completed


def _readable_bins(history: list[dict[str, Any]]) -> int | None:
    """The bins for the next binary evaluation, from the latest one's noised positives and
    count noise sd (`bins_for`); None (the scorer's default) before any evaluation."""
    for entry in reversed(history):
        metrics = entry.get("metrics") or {}
        if "positives" in metrics and "count_noise_std" in metrics:
            return bins_for(float(metrics["positives"]), float(metrics["count_noise_std"]))
    return None


def _entry(history: list[dict[str, Any]], round_: int) -> dict[str, Any]:
    for entry in history:
        if entry["round"] == round_:
            return entry
    history.append({"round": round_})
    history.sort(key=lambda e: e["round"])
    return next(e for e in history if e["round"] == round_)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays become floats and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _failure(hospital: str, message: str) -> dict[str, Any]:
    """A failed call's reply; marked busy when the hospital is still computing this release
    for an earlier call that timed out here."""
    if CALL_AGAIN in message:
        return {"hospital": hospital, "error": f"is still computing it ({message})", BUSY: True}
    return {"hospital": hospital, "error": message}


def _dropped(reply: dict[str, Any]) -> bool:
    """A failure that drops the hospital from this round rather than stopping the study."""
    return bool(reply.get(UNREACHABLE) or reply.get(BUSY))


def _syft_message(error: Any) -> str:
    text = str(getattr(error, "public_message", None) or getattr(error, "message", None) or error)
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__


def _progress(enabled: bool, total: int, done: int, study_id: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=study_id, unit="call")


def _phase_shown(bar: Any) -> Callable[[str], None] | None:
    """Show a secure call's current phase (advertise, share, mask, confirm, unmask) on the bar."""
    if bar is None:
        return None
    return lambda phase: bar.set_description_str(f"{bar.desc.split(' [')[0]} [{phase}]")


def _advance(bar: Any, history: list[dict[str, Any]]) -> None:
    if bar is None:
        return
    latest = next((h for h in reversed(history) if h.get("metrics")), {})
    metrics = latest.get("metrics", {})
    shown = {k: f"{metrics[k]:.3f}" for k in ("auroc", "accuracy") if k in metrics}
    if history and history[-1].get("epsilon") is not None:
        shown["eps"] = f"{history[-1]['epsilon']:.2f}"
    bar.set_postfix(shown)
    bar.update(1)


def _record_who(entry: dict, hospitals: list[str], trained: bool, dropped: dict) -> None:
    """Who a call heard from: a training call's `contributors` are the round's; the final,
    evaluation-only call goes in `evaluated_by` so it never overwrites who trained the last
    round. Hospitals that dropped out of either call are merged into `dropped`."""
    entry["contributors" if trained else "evaluated_by"] = hospitals
    if dropped or "dropped" in entry:
        entry["dropped"] = {**entry.get("dropped", {}), **dropped}
