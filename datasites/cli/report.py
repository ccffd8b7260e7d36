"""Text for the operator's terminal: reviews, budgets, the audit log, watcher decisions.

Kept apart from `datasites.governance.operator` so the Python API returns data (for notebooks and
tests) and only the command line turns it into lines to read. What this module prints
itself goes through `datasites.cli.terminal.say`; what it returns, `datasites.cli.main` prints
the same way.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from datasites.cli.terminal import say
from datasites.contract.plan import plan_fields
from datasites.contract.secure_sum import tolerated_colluders
from datasites.governance.operator import Operator, Review
from datasites.governance.statements import Budget
from datasites.site.audit import AuditLog, format_entry


def _plan_line(key: str, value: object, plan: dict) -> str:
    """One plan field; a secure study's partners one per line, with the key they name, and
    what its threshold resists."""
    if key == "partners" and isinstance(value, dict):
        rows = [f"  {'partners':<14} {len(value)} hospitals (name, datasite verify key)"]
        return "\n".join(rows + [f"    {name:<20} {key}" for name, key in value.items()])
    if key == "threshold" and isinstance(plan.get("partners"), dict):
        return f"  {key:<14} {value}  ({threshold_covers(value, len(plan['partners']))})"
    return f"  {key:<14} {value}"


def threshold_covers(threshold: object, partners: int) -> str:
    """Which adversary a secure threshold t of n partners holds against, in words."""
    try:
        colluders = tolerated_colluders(threshold, partners)  # type: ignore[arg-type]
    except ValueError:
        return f"not a valid threshold for {partners} partners"
    head = f"every sum covers at least {threshold} of {partners} hospitals"
    if colluders < 0:
        return f"{head}; does NOT hold against a relay that lies"
    if colluders == 0:
        return f"{head}; holds against the relay alone, not with a partner colluding"
    return (
        f"{head}; holds against the relay lying together with up to {colluders} colluding "
        f"partner hospital{'s' if colluders > 1 else ''}"
    )


def quota_lines(root: Path, email: str) -> list[str]:
    """The requester's quota here and what it used (`policy.toml [quota]`, `scientists
    quota`); a damaged policy or book is named, never raised."""
    from datasites.cli.scientists import quota_text
    from datasites.server.quotas import usage_of
    from datasites.site.policy import Policy, PolicyError

    try:
        quota = Policy.load(root).quota_for(root, email)
        usage = usage_of(root, email)
    except (PolicyError, OSError, ValueError) as error:
        return [f"quota     cannot be read: {error}"]
    return [f"quota     {quota_text(quota, usage)}"]


def review_text(r: Review, root: Path | None = None) -> str:
    """What `show` prints, top to bottom in the order an operator decides; with the
    hospital's folder, the requester's quota too."""
    v = r.view
    lines = [
        f"request   {v.id}",
        f"from      {v.scientist or '(unknown)'} at {v.submitted}",
        f"status    {v.status}",
        f"function  {v.function}",
    ]
    if root is not None and v.scientist:
        lines += quota_lines(Path(root), v.scientist)
    if v.malformed:
        lines.append(f"MALFORMED {v.malformed}")
    lines.append(
        f"changes   {len(v.changes)} (only one, the approval of a vetted code, can be approved)"
    )
    lines += [f"  {i}. {change.line()}" for i, change in enumerate(v.changes, 1)]
    lines.append(
        f"verdict   {v.verdict.kind.upper()}"
        + ("" if v.verdict.vetted else " - would run unsandboxed inside this datasite")
    )
    lines += [f"          - {reason}" for reason in v.verdict.reasons]
    if v.plan:
        lines.append("plan")
        shown = [k for k in plan_fields() if k in v.plan and k != "scientist"]  # see "from"
        lines += [_plan_line(k, v.plan[k], v.plan) for k in shown]
    if v.verdict.plan_error:
        lines.append(f"plan error: {v.verdict.plan_error}")
    if r.projection:
        lines.append("privacy")
        lines += [f"  {line}" for line in r.projection.lines()]
    lines.append("approve would be " + ("REFUSED:" if r.problems else "allowed"))
    lines += [f"  - {p}" for p in r.problems]
    lines += ["code", *(f"  | {line}" for line in v.code.splitlines())]
    if r.diff:
        lines += ["diff against this scientist's previously approved request", r.diff]
    else:
        lines.append("no previously approved request from this scientist to compare with")
    return "\n".join(lines)


def budget(b: Budget) -> str:
    lines = []
    for d in b.datasets.values():
        parts = ", ".join(f"{part} {value:.3f}" for part, value in d.parts.items())
        lines.append(
            f"{d.dataset:<10} cap {d.cap:.2f}  spent {d.spent:.3f} (the larger "
            f"part of {parts}; RDP cross-check {d.spent_rdp:.3f})  remaining "
            f"{d.remaining:.3f}  ({len(d.events)} events)"
        )
        for s in d.studies:
            lines.append(
                f"  {s.study_id:<28} {s.scientist:<28} approved eps "
                f"{s.epsilon:g}, spent {s.spent:.3f}"
            )
    return "\n".join(lines)


def audit(root: Path, verify: bool, as_json: bool) -> int:
    """Print the log (or verify it); exit status 1 when verification fails."""
    log = AuditLog.open(root)
    if not verify:
        for entry in log.entries():
            say(json.dumps(entry) if as_json else format_entry(entry))
        return 0
    result = log.verify()
    if result.ok:
        say(
            f"{root.name}: audit log intact, {result.entries} entries; last hash {result.last_hash}"
        )
        return 0
    say(
        f"{root.name}: audit log FAILED verification at entry {result.first_bad}: {result.problem}",
        file=sys.stderr,
    )
    return 1


def watch(op: Operator, hospital: str, interval: float, once: bool) -> int:
    from datasites.governance.watch import watch as run

    rules = op.hospital.policy.auto_approve
    if not rules.enabled or not rules.scientists:
        say(
            f"{hospital}: auto-approval is off (policy.toml [auto_approve] enabled = "
            f"{str(rules.enabled).lower()}, scientists = {list(rules.scientists)}); every "
            "request is left for a person.",
            flush=True,
        )
    with contextlib.suppress(KeyboardInterrupt):
        run(op, interval=interval, once=once, report=lambda d: say(d.line(hospital), flush=True))
    return 0
