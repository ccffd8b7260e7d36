"""The hospital's training runtime: the only code that touches private rows for training.

An approved study's code is a literal plan plus one call to `execute`. Enforcement lives
here, not in the approval: the plan and the weights are validated on every call, the round
must be within the approved rounds, the noise is calibrated by this hospital from its own
dataset size so that the approved epsilon is the study's whole cost here (training and
evaluation), and every release is charged to the ledger in the same transaction that
records its result. A repeated call for a completed round returns the recorded result and
spends nothing, so re-running a round never yields a second noisy sample.

Errors that reach the scientist are built from ids, round numbers and epsilons only;
anything unexpected is logged here with an incident id and reported without its message,
which could carry private values.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from datasites.contract.encoding import N_CLASSES, encode_ehr, encode_images
from datasites.contract.mocks import is_mock
from datasites.contract.phase_call import LIGHT_PHASES
from datasites.contract.plan import Plan, PlanError
from datasites.contract.release import (
    LOSS_BOUND,
    LOSS_STEPS,
    binary_counts,
    check_edges,
    default_edges,
    multiclass_counts,
    sensitivity,
)
from datasites.contract.secure_wire import Layout, round_layout
from datasites.contract.stored import dumps, loads
from datasites.contract.syft_io import CALL_AGAIN
from datasites.contract.untrusted import int_fits, shown
from datasites.contract.zoo import build_model, load_weights
from datasites.privacy.budget import study_budget
from datasites.privacy.dp import TrainSpec, dp_train, tensor_view
from datasites.privacy.evaluation import noisy
from datasites.privacy.ledger import LedgerError, StudyRecord
from datasites.privacy.noise import DISCRETE_NOISE_FACTOR, discrete_gaussian
from datasites.runtime import secure
from datasites.runtime.cache import EncodedMemo, FrameMemo
from datasites.site.audit import Event, weights_digest
from datasites.site.caller import NoAccount, current_account
from datasites.site.compute import Compute
from datasites.site.hospital import Hospital
from datasites.site.identity import Identity
from datasites.site.partners import load_partners, partner_violations
from datasites.site.paths import HOSPITAL_ROOT_ENV, IDENTITY_FILE, POLICY_FILE

REQUEST_KEYS = frozenset({"round", "weights"})
# Histogram bin edges for this call's evaluation: the scientist's choice, costs nothing.
OPTIONAL_KEYS = frozenset({"edges"})
# Calls one syft call may carry (`_batched`): a secure round's phase and the next round's.
MAX_BATCH = 3
log = logging.getLogger("datasites.runtime.execute")
# Encoded image assets, reused while the datasite hands out the same read-only arrays.
_ENCODED_IMAGES = EncodedMemo(encode_images)
# Encoded EHR tables, by the digest of the stored bytes the datasite read them from.
_ENCODED_EHR = FrameMemo(encode_ehr)


class RequestError(ValueError):
    """The call's arguments are wrong; the message carries no private value."""


class PolicyRefusal(RequestError):
    """The study is outside the hospital's site policy (which may have changed since the
    approval): the runtime enforces it on every call, not only `approve`."""


def current_hospital() -> Hospital:
    """The hospital this datasite serves, reopened when its operator edits policy.toml (a
    lowered cap or a tightened study limit applies from the next call, no restart)."""
    root = os.environ.get(HOSPITAL_ROOT_ENV)
    if not root:
        raise RuntimeError(f"{HOSPITAL_ROOT_ENV} is not set: the runtime runs inside a datasite.")
    policy = Path(root) / POLICY_FILE
    stamp = policy.stat().st_mtime_ns if policy.exists() else 0
    return _hospital(root, stamp)


@lru_cache(maxsize=2)
def _hospital(root: str, policy_stamp: int) -> Hospital:
    return Hospital.open(Path(root))


current_hospital.cache_clear = _hospital.cache_clear  # type: ignore[attr-defined]


def execute(plan: Any, *, train: Any, test: Any, request: Any) -> dict[str, Any]:
    """Run one call of an approved study: evaluate what is due, train the round.

    `request` is {"round": r, "weights": global weights after round r - 1} and optionally
    "edges", the evaluation's histogram bin edges (see `datasites.privacy.evaluation`). Round r in
    1..rounds trains; round rounds + 1 only evaluates the final model.
    """
    hospital = current_hospital()
    if is_mock(train) or is_mock(test):
        # syft's second run of the approved code, on the mocks (the twin result's mock
        # half): nothing private is involved, so nothing is trained, recorded or spent.
        return {"hospital": hospital.name, "mock": True}
    # A call's audit entries are written together, before its reply is returned.
    with hospital.audit.grouped():
        if isinstance(request, dict) and "batch" in request:
            return _batched(hospital, plan, train, test, request)
        return _one_call(hospital, plan, train, test, request)


def _one_call(hospital: Hospital, plan: Any, train: Any, test: Any, request: Any) -> dict:
    started = time.perf_counter()
    try:
        parsed = Plan.from_dict(plan)
        out = _execute(hospital, parsed, train, test, request)
        log.info(
            "%s call %s: %.2f s in the runtime",
            parsed.study_id,
            out.get("round"),
            time.perf_counter() - started,
        )
        return out
    except (PlanError, RequestError, LedgerError, secure.SecureRefusal) as error:
        log.warning("refused: %s", error)
        hospital.audit.append(
            Event.REFUSED,
            **_call_fields(plan, request),
            reason=str(error),
            refusal=type(error).__name__,
        )
        return {"hospital": hospital.name, "error": str(error), "refused": type(error).__name__}
    except Exception:
        incident = secrets.token_hex(4)
        log.exception("incident %s", incident)
        hospital.audit.append(Event.INCIDENT, **_call_fields(plan, request), incident=incident)
        return {
            "hospital": hospital.name,
            "error": f"{hospital.name} could not complete this call (incident {incident}); its "
            "operator can find the details in the datasite log.",
            "refused": "InternalError",
        }


def execute_light(plan: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A secure study's phases that read no private row (advertise, share, confirm,
    unmask), called by the datasite's own route rather than syft's code execution
    (`datasites.server.phase_route`, which has checked that `plan` is the literal plan of
    the caller's approved template code). They are answered, refused and audited exactly as
    through `execute`; a batch naming any other phase is refused whole, since only the mask
    phase reads the rows syft hands to approved code."""
    hospital = current_hospital()
    batch = request.get("batch") if isinstance(request, dict) else None
    light = isinstance(batch, list) and all(
        isinstance(r, dict) and r.get("phase") in LIGHT_PHASES for r in batch
    )
    if not light or not isinstance(plan, dict) or plan.get("aggregation") != "secure":
        error = "this route answers a secure study's advertise, share, confirm and unmask only."
        hospital.audit.append(Event.REFUSED, **_call_fields(plan, None), reason=error)
        return {"hospital": hospital.name, "error": error, "refused": "RequestError"}
    return execute(plan, train=None, test=None, request=request)


def _batched(hospital: Hospital, plan: Any, train: Any, test: Any, request: dict) -> dict:
    """Several calls in one syft call ({"batch": [request, ...]}): each is answered exactly as
    if it came alone, in order, and has its own reply or refusal. A secure study's relay
    sends the next round's advert or shares along with this round's phase, which halves the
    syft calls a round takes."""
    batch = request["batch"]
    if (
        set(request) != {"batch"}
        or not isinstance(batch, list)
        or not 1 <= len(batch) <= MAX_BATCH
        or any(not isinstance(r, dict) or "batch" in r for r in batch)
    ):
        error = f"a batch is {{'batch': [1-{MAX_BATCH} requests]}}, none of them a batch."
        hospital.audit.append(Event.REFUSED, **_call_fields(plan, None), reason=error)
        return {"hospital": hospital.name, "error": error, "refused": "RequestError"}
    replies = [execute(plan, train=train, test=test, request=r) for r in batch]
    return {"hospital": hospital.name, "batch": replies}


def _call_fields(plan: Any, request: Any) -> dict[str, Any]:
    """Study id and round of a call, for the audit log; only if they are what they claim
    (a refused call's arguments are the scientist's, possibly malformed)."""
    study = plan.get("study_id") if isinstance(plan, dict) else None
    round_ = request.get("round") if isinstance(request, dict) else None
    return {
        "study": study[:64] if isinstance(study, str) else None,
        # Bounded too: a 5,000-digit round cannot even be written as JSON.
        "round": round_ if type(round_) is int and int_fits(round_) else None,
    }


def _execute(hospital: Hospital, plan: Plan, train: Any, test: Any, request: Any) -> dict:
    _check_owner(plan)  # from here on, plan.scientist is the authenticated account
    hospital.ledger.own(plan.study_id, plan.scientist)  # the id is this account's, or refused
    if plan.secure:
        secure.check_request(request, plan)
    else:
        round_, weights, edges = _parse_request(request, plan)
    signing_key = _check_policy(hospital, plan)
    if plan.secure:
        # Only the mask phase reads private rows; the others answer from keys and shares.
        prepare = cache(lambda: _prepare(hospital, plan, train))  # once per call, if at all
        releases = _releases(hospital, plan, prepare, test)
        out = secure.answer(hospital, plan, signing_key, request, releases)
        return _spent(hospital, plan, out) if out["phase"] == "mask" else out
    record, features, labels = _prepare(hospital, plan, train)
    out: dict[str, Any] = {"hospital": hospital.name, "round": round_}
    if round_ - 1 in plan.eval_rounds():
        model = _model(plan, weights)
        out["evaluation"] = _evaluate(hospital, plan, record, round_ - 1, (model, edges), test)
    if round_ <= plan.rounds:
        out["train"] = _train(hospital, plan, record, round_, weights, features, labels)
    return _spent(hospital, plan, out)


def _check_owner(plan: Plan) -> None:
    """The plan must name the account it runs for: the study is that account's, and every
    record of it is keyed by (plan.scientist, plan.study_id) once this has passed. The
    account comes from the key that signed the code's submission, never from the plan."""
    try:
        account = current_account()
    except NoAccount:
        raise RequestError(
            "this code runs for no account of this hospital (its submitter was removed); "
            "ask the operator."
        ) from None
    if plan.scientist != account:
        raise RequestError(
            f"the plan names {shown(plan.scientist)} as its scientist but runs for the account "
            f"{account}; a plan names the account that submits it."
        )


def _check_policy(hospital: Hospital, plan: Plan) -> bytes:
    """Refuse a study outside this hospital's policy (or, secure, its partner registry);
    a secure study's signing key (the datasite's own), else b""."""
    if plan.delta != hospital.policy.budget.delta:
        raise RequestError(
            f"{hospital.name} accounts at delta {hospital.policy.budget.delta:g}; set the "
            "study's delta to that value."
        )
    violations = hospital.policy.study.violations(plan.to_dict())
    signing_key = b""
    if plan.secure:
        identity = _identity(hospital)
        signing_key = bytes.fromhex(identity.signing_key)
        violations += _partner_violations(hospital, plan, identity.verify_key)
    if violations:
        raise PolicyRefusal(
            f"{hospital.name}'s site policy does not allow this study: {'; '.join(violations)}."
        )
    return signing_key


def _prepare(hospital: Hospital, plan: Plan, train: Any) -> tuple[StudyRecord, Any, Any]:
    """The study's record (noise calibrated from the released size) and encoded rows."""
    features, labels = _encode(plan, train)
    # Everything that depends on the size (the compute limits, the sampling rate, the steps,
    # the noise calibration, the reply) uses its released DP count, never len(labels).
    n = hospital.ledger.public_size(plan.dataset, len(labels))
    _check_compute(hospital, plan, n=n)
    return _register(hospital, plan, n=n), features, labels


def _spent(hospital: Hospital, plan: Plan, out: dict[str, Any]) -> dict[str, Any]:
    """The reply with what the study and the dataset have spent here (public figures)."""
    out["epsilon_study"] = hospital.ledger.study_spent(plan.study_id, owner=plan.scientist)
    out["epsilon_total"] = hospital.ledger.spent(plan.dataset)
    out["epsilon_cap"] = hospital.ledger.cap(plan.dataset)
    return out


def _identity(hospital: Hospital) -> Identity:
    """The datasite's own identity: a secure study's adverts are signed with its signing key
    (the syft server's), and partners verify them with its verify key."""
    return Identity.load_or_create(hospital.root / IDENTITY_FILE, hospital.name)


def _partner_violations(hospital: Hospital, plan: Plan, own_key: str) -> list[str]:
    """A secure plan's partners against this hospital's registry (`datasites.site.partners`)."""
    return partner_violations(plan.partners, load_partners(hospital.root), hospital.name, own_key)


def _releases(
    hospital: Hospital, plan: Plan, prepare: Callable[[], tuple], test: Any
) -> secure.Releases:
    """The plain runtime's charged releases, for the secure mask phase to mask; the rows
    are encoded and the study registered only when a release is asked for."""

    def trained(round_: int, weights: dict) -> dict[str, Any]:
        # Checked on every call, also a repeat that returns the recorded release: the
        # masked update is taken against these weights.
        _model(plan, weights)
        record, features, labels = prepare()
        return _train(hospital, plan, record, round_, weights, features, labels)

    def evaluated(after: int, weights: dict, edges: Any) -> dict[str, Any]:
        record = prepare()[0]
        scored = (_model(plan, weights), _edges(edges, plan))
        released = _evaluate(hospital, plan, record, after, scored, test)
        steps = round(released["loss_sum"] * LOSS_STEPS / LOSS_BOUND)
        return {**released, "loss_steps": steps}

    def layout(round_: int, edges: Any) -> Layout:
        return round_layout(plan, round_, _edges(edges, plan))

    return secure.Releases(trained, evaluated, layout)


def _check_compute(hospital: Hospital, plan: Plan, n: int) -> None:
    """Refuse, before any training, a study whose compute here is beyond the site policy:
    epsilon bounds what a study learns, not how long it occupies this server."""
    violations = hospital.policy.study.compute_violations(Compute.of(plan, n))
    if violations:
        raise PolicyRefusal(
            f"{hospital.name}'s site policy does not allow this study's "
            f"compute: {'; '.join(violations)}."
        )


def _parse_request(request: Any, plan: Plan) -> tuple[int, dict[str, Any], Any]:
    if not isinstance(request, dict) or not REQUEST_KEYS <= set(request) <= (
        REQUEST_KEYS | OPTIONAL_KEYS
    ):
        raise RequestError(
            "the weights argument must be a dict with the keys round and weights (and "
            "optionally edges); DP parameters come from the approved plan only."
        )
    round_ = request["round"]
    if not isinstance(round_, int) or isinstance(round_, bool):
        raise RequestError("round must be an integer.")
    if not 1 <= round_ <= plan.rounds + 1:
        raise RequestError(
            f"round {shown(round_)} is outside this study's approved rounds 1-{plan.rounds} "
            f"(and {plan.rounds + 1} for the final evaluation)."
        )
    if not isinstance(request["weights"], dict):
        raise RequestError("weights must be a dict of parameter name to array.")
    return round_, request["weights"], _edges(request.get("edges"), plan)


def _edges(edges: Any, plan: Plan) -> np.ndarray:
    """The evaluation's bin edges: the request's, validated, or the task's defaults."""
    kind = "binary" if plan.task == "ehr" else "multiclass"
    if edges is None:
        return default_edges(kind)
    try:
        return check_edges(edges, None if kind == "binary" else N_CLASSES)
    except ValueError as error:  # the scientist's own input: the message is safe
        raise RequestError(str(error)) from None


def _model(plan: Plan, weights: dict[str, Any]) -> Any:
    try:
        model = build_model(plan.model, **plan.model_kwargs)
        load_weights(model, weights)
    except ValueError as error:  # zoo messages name keys and shapes, never values
        raise RequestError(str(error)) from None
    return model


def _encode(plan: Plan, asset: Any) -> tuple[np.ndarray, np.ndarray]:
    if plan.task == "ehr":
        return _ENCODED_EHR(asset, plan.label)
    return _ENCODED_IMAGES(asset["images"], asset["labels"])


def _register(hospital: Hospital, plan: Plan, n: int) -> StudyRecord:
    """Calibrate this study's noise from this hospital's own n once; reuse it after.

    Calibration searches the accountant and takes seconds, so later calls only check that
    the plan still matches what was registered (a reused study id with other parameters is
    refused by the ledger).
    """
    stored = hospital.ledger.study(plan.study_id, owner=plan.scientist)
    if stored is not None and _same_plan(stored, plan, n):
        return stored
    evaluations = len(plan.eval_rounds())
    budget = study_budget(plan, n)
    record = StudyRecord(
        study_id=plan.study_id,
        scientist=plan.scientist,
        dataset=plan.dataset,
        rounds=plan.rounds,
        local_epochs=plan.local_epochs,
        batch_size=min(plan.batch_size, n),
        lr=plan.lr,
        epsilon=plan.epsilon,
        delta=plan.delta,
        max_grad_norm=plan.max_grad_norm,
        n=n,
        sample_rate=budget.train.sample_rate,
        noise_multiplier=budget.train.noise_multiplier,
        eval_noise_multiplier=budget.evaluation.noise_multiplier,
        steps_per_round=budget.train.steps,
        evaluations=evaluations,
        plan_sha256=plan.digest(),
    )
    return hospital.ledger.register_study(record)


def _same_plan(stored: StudyRecord, plan: Plan, n: int) -> bool:
    expected = {
        "scientist": plan.scientist,
        "dataset": plan.dataset,
        "rounds": plan.rounds,
        "local_epochs": plan.local_epochs,
        "batch_size": min(plan.batch_size, n),
        "lr": plan.lr,
        "epsilon": plan.epsilon,
        "delta": plan.delta,
        "max_grad_norm": plan.max_grad_norm,
        "n": n,
        "evaluations": len(plan.eval_rounds()),
        "plan_sha256": plan.digest(),
    }
    return all(getattr(stored, k) == v for k, v in expected.items())


def _once(
    hospital: Hospital,
    study: tuple[str, str],
    kind: str,
    round_: int,
    event: Any,
    compute: Callable[[], dict[str, Any]],
    masked: bool = False,
) -> dict[str, Any]:
    """Make a release at most once: a repeat returns the recorded result and spends nothing.
    `masked`: the release leaves only inside a secure study's masked vector (audited so).

    The release is charged before it is computed (`Ledger.claim`), so a computation that
    fails, whatever made it fail, has spent its epsilon: a failure is never a free query.
    Only the call that charged it computes it; a concurrent identical call gets the
    recorded release, or is told to call again while it is being computed.
    """
    owner, study_id = study
    ledger = hospital.ledger
    recorded = ledger.result(study_id, kind, round_, owner=owner)
    if recorded:
        hospital.audit.append(
            Event.REPEAT_SERVED,
            study=study_id,
            kind=kind,
            round=round_,
            note="the recorded release was returned; nothing spent",
        )
        return loads(recorded)
    if recorded is not None or not ledger.claim(study_id, kind, round_, event, owner=owner):
        return _claimed_elsewhere(hospital, study, kind, round_)
    result = compute()
    ledger.complete(study_id, kind, round_, dumps(result), owner=owner)
    _audit_release(hospital, study, kind, round_, result, masked)
    return result


def _claimed_elsewhere(hospital: Hospital, study: tuple[str, str], kind: str, round_: int) -> dict:
    """The release another call charged: its result if stored, else a refusal to retry."""
    owner, study_id = study
    recorded = hospital.ledger.result(study_id, kind, round_, owner=owner)
    if recorded:
        return loads(recorded)
    what = "training round" if kind == "train" else "evaluation after round"
    raise RequestError(
        f"the {what} {round_} of study {study_id} was charged by another call and has no "
        f"release yet (it is being computed, or that call failed); {CALL_AGAIN}."
    )


def _audit_release(
    hospital: Hospital,
    study: tuple[str, str],
    kind: str,
    round_: int,
    result: dict[str, Any],
    masked: bool = False,
) -> None:
    """What left the hospital: sample count and weights digest, or the evaluation's noise;
    for a secure study, that it left masked (the `secure_phase` entry has what was sent)."""
    owner, study_id = study
    spent = {"epsilon_study": hospital.ledger.study_spent(study_id, owner=owner), "owner": owner}
    if masked:
        spent["released"] = "masked (secure aggregation): only sums are readable"
    if kind == "train":
        digest = weights_digest(result["weights"])
        hospital.audit.append(
            Event.ROUND_EXECUTED,
            study=study_id,
            round=round_,
            n=result["n"],
            weights_sha256=digest,
            **spent,
        )
    else:
        hospital.audit.append(
            Event.EVALUATION_RELEASED,
            study=study_id,
            after_round=round_,
            noise_std=result["noise_std"],
            **spent,
        )


def _train(
    hospital: Hospital,
    plan: Plan,
    record: StudyRecord,
    round_: int,
    weights: dict,
    features: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        # The released n and its public row bound set the sampling and the padded batch size:
        # a round's work follows them and the plan, never the exact count or the rows.
        spec = TrainSpec.for_study(record, plan)
        outcome = dp_train(_model(plan, weights), features, labels, spec, task=plan.task)
        log.info("%s round %d trained: n=%d", plan.study_id, round_, outcome.samples)
        # The mean training loss is computed from private rows without noise, so it is not
        # released: progress is shown by the noised test loss of each evaluation instead.
        return {"weights": outcome.weights, "n": outcome.samples, "steps": outcome.steps}

    event = record.budget().train
    study = (plan.scientist, plan.study_id)
    return _once(hospital, study, "train", round_, event, compute, plan.secure)


def _evaluate(
    hospital: Hospital, plan: Plan, record: StudyRecord, after: int, scored: tuple, test: Any
) -> dict[str, Any]:
    """Release the noised evaluation of `scored` = (model, bin edges) once per round."""

    def compute() -> dict[str, Any]:
        features, labels = _encode(plan, test)
        counts, losses = _counts(plan, *scored, features, labels)
        released = _release(counts, losses, record.eval_noise_multiplier)
        # The edges are public (the scientist's or the defaults): they make the release
        # self-describing, also when a repeated call returns the recorded one.
        return {**released, "edges": scored[1].tolist(), "after_round": after}

    event = record.budget().evaluation
    study = (plan.scientist, plan.study_id)
    return _once(hospital, study, "eval", after, event, compute, plan.secure)


def _release(counts: Any, losses: np.ndarray, sigma: float) -> dict[str, Any]:
    """One Gaussian mechanism over the histogram counts and the clipped test-loss sum.

    The loss sum is scaled by 1 / LOSS_BOUND so that one patient moves it by at most 1;
    with the counts' sensitivity S the joint L2 sensitivity is sqrt(S^2 + 1), and every
    coordinate gets noise sigma * sqrt(S^2 + 1): one release at noise multiplier sigma.
    Every coordinate is an integer with discrete Gaussian noise (`datasites.privacy.noise`): each
    patient's clipped loss counts in LOSS_STEPS steps of LOSS_BOUND / LOSS_STEPS, so the
    released loss sum lies on that fixed grid and no float rounding depends on the data.
    """
    base = sensitivity(counts)
    joint = float(np.sqrt(base**2 + 1.0))
    steps = np.rint(np.clip(losses, 0.0, LOSS_BOUND) * (LOSS_STEPS / LOSS_BOUND))
    loss_steps = int(steps.astype(np.int64).sum())
    noised_steps = loss_steps + int(discrete_gaussian(sigma * joint * LOSS_STEPS))
    return {
        "counts": noisy(counts, noise_multiplier=sigma * joint / base),
        "loss_sum": noised_steps * (LOSS_BOUND / LOSS_STEPS),
        # Public (it follows from the plan and n): lets the scientist judge the metrics.
        "noise_std": sigma * joint * DISCRETE_NOISE_FACTOR,
    }


def _counts(
    plan: Plan, model: Any, edges: np.ndarray, features: np.ndarray, labels: np.ndarray
) -> tuple[Any, np.ndarray]:
    """Histogram counts and per-example losses of the model on the test rows.

    Total: the scientist chooses the weights, and weights that overflow to a non-finite
    logit for exactly the patients meeting some condition would otherwise make the call
    fail for them alone, a noise-free yes/no answer about private rows. A patient whose
    logits are not finite is scored as a fixed, data-independent prediction (probability
    1/2, or uniform over the classes) with the loss bound as its loss; each patient still
    moves the same cells, so the release's sensitivity is unchanged.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        logits = model(tensor_view(features))
        target = torch.from_numpy(labels)
        if plan.task == "ehr":
            logits = logits.reshape(-1)
            finite = torch.isfinite(logits)
            logits = torch.where(finite, logits, torch.zeros_like(logits))  # sigmoid(0) = 1/2
            losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            counts = binary_counts(torch.sigmoid(logits).double().numpy(), labels, edges)
            return counts, _total_losses(losses, finite)
        finite = torch.isfinite(logits).all(dim=1)
        logits = torch.where(finite[:, None], logits, torch.zeros_like(logits))  # uniform
        losses = F.cross_entropy(logits, target, reduction="none")
        probs = torch.softmax(logits.double(), dim=1).numpy()
        return multiclass_counts(probs, labels, edges), _total_losses(losses, finite)


def _total_losses(losses: Any, finite: Any) -> np.ndarray:
    """Per-example losses with the bound for every non-finite example or loss."""
    out = losses.double().numpy().copy()
    out[~finite.numpy() | ~np.isfinite(out)] = LOSS_BOUND
    return out
