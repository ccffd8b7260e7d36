"""Approve what the site policy allows, leave the rest for a person: `python -m datasites watch`.

A hospital that trusts a few scientists for small, vetted studies should not need a person
at the console for each of them, and must still never approve anything else by accident.
The watcher polls the pending requests; a request is approved only when the operator checks
(vetted code, plan within policy, projected epsilon within the cap) and every
`[auto_approve]` rule pass. Each decision, approved or left for a person with the reasons,
is recorded once in the audit log as a `policy_decision`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from datasites.contract.syft_io import PENDING, request_status
from datasites.governance.operator import Operator, OperatorError, Review
from datasites.site.audit import Event

WATCHER = "watch"  # the operator name decisions are recorded under
log = logging.getLogger("datasites.governance.watch")


@dataclass(frozen=True)
class Decision:
    request: str
    approved: bool
    reasons: tuple[str, ...]

    def line(self, hospital: str) -> str:
        if self.approved:
            return f"{hospital}: auto-approved {self.request[:12]}"
        return f"{hospital}: left {self.request[:12]} for a person: {'; '.join(self.reasons)}"


def blocking_reasons(op: Operator, review: Review) -> list[str]:
    """Everything that keeps `review`'s request from automatic approval; [] if nothing."""
    plan = review.view.plan or {}
    epsilon = plan.get("epsilon")
    rules = op.hospital.policy.auto_approve.refusals(
        review.view.scientist,
        review.view.verdict.vetted,
        _epsilon(epsilon),
    )
    return [*review.problems, *rules]


def _epsilon(value: object) -> float:
    """The plan's epsilon as a float; inf (never auto-approved) for anything unusable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("inf")
    try:
        number = float(value)
    except OverflowError:
        return float("inf")
    return number if math.isfinite(number) else float("inf")


def decide(op: Operator, request: object) -> Decision:
    """Approve `request` if the policy allows it; record the decision either way.

    A request that cannot even be reviewed is left for a person with the reason: one
    hostile request must not stop the watcher from deciding the others.
    """
    request_id = str(getattr(request, "id", "?"))
    approved = False
    try:
        review = op.review(request)
        request_id = review.view.id
        reasons = blocking_reasons(op, review)
        if not reasons:
            try:
                op.approve(request_id, by=WATCHER)
                approved = True
            except OperatorError as error:  # changed since the review (e.g. another approval)
                reasons = [str(error)]
    except Exception as error:
        log.exception("could not decide request %s", request_id)
        reasons = [f"malformed request: {type(error).__name__}"]
    op.audit_log.append(
        Event.POLICY_DECISION,
        request=request_id,
        operator=WATCHER,
        approved=approved,
        reasons=reasons,
    )
    return Decision(request_id, approved, tuple(reasons))


def decided_requests(op: Operator) -> set[str]:
    """Requests the watcher already decided, from the audit log (survives restarts)."""
    return {
        e.get("request", "") for e in op.audit_log.entries() if e.get("event") == "policy_decision"
    }


def watch_once(op: Operator, seen: set[str]) -> list[Decision]:
    """Decide every pending request not decided before; returns the new decisions."""
    decisions = []
    for request in op.client.requests:
        request_id = str(getattr(request, "id", ""))
        if request_id in seen or not _pending(request):
            continue
        seen.add(request_id)
        decisions.append(decide(op, request))
    return decisions


def _pending(request: object) -> bool:
    try:
        return request_status(request) == PENDING
    except Exception:  # a request whose status cannot be read is decided (left for a person)
        return True


def watch(
    op: Operator,
    *,
    interval: float = 2.0,
    once: bool = False,
    stop: threading.Event | None = None,
    report: Callable[[Decision], None] = lambda d: None,
) -> int:
    """Poll until `stop` is set (or once); returns how many requests were decided."""
    stop = stop or threading.Event()
    seen = decided_requests(op)
    count = 0
    while True:
        try:
            for decision in watch_once(op, seen):
                report(decision)
                count += 1
        except Exception:  # the datasite is briefly unreachable, say: try at the next poll
            log.exception("%s: could not list the requests", op.hospital.name)
        if once or stop.wait(interval):
            return count
