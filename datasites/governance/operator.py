"""A hospital operator's view of its datasite: requests, decisions, budget and audit.

The command line (`python -m datasites ...`) and notebooks use this one class, so both show
the same facts and make the same checks. Every decision is checked before syft is told:
custom code (anything but the scientist library's template, which would run unsandboxed in
the datasite) needs an explicit, recorded override; a plan outside the site policy or whose
projected epsilon would pass the cap is refused with the reason. Every decision and
refusal is appended to the hospital's tamper-evident audit log.
"""

from __future__ import annotations

import getpass
import html
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.contract.syft_io import PENDING, quiet, request_status, syft_message
from datasites.contract.tasks import TASKS
from datasites.governance.changes import ChangeView, Site, inspect_request
from datasites.governance.statements import (
    AuditTrail,
    Budget,
    DatasetBudget,
    LedgerEvent,
    StudySpend,
)
from datasites.governance.vetting import CUSTOM, Verdict, classify, code_diff
from datasites.site.audit import AuditLog, Event
from datasites.site.identity import Identity
from datasites.site.partners import load_partners, partner_violations
from datasites.site.paths import FEDERATION_FILE, IDENTITY_FILE, MANIFEST_FILE, HospitalConfig

if TYPE_CHECKING:
    from datasites.contract.plan import Plan
    from datasites.governance.projection import Projection
    from datasites.site.hospital import Hospital

MALFORMED = "malformed"
DATASETS = TASKS  # one dataset per task
NO_ACCOUNT = "(no account)"


class OperatorError(RuntimeError):
    """An operator command could not be carried out; one sentence says why."""


@dataclass(frozen=True)
class RequestView:
    """One code request as the operator sees it, with the verifier's verdict."""

    id: str
    status: str
    scientist: str
    function: str
    submitted: str
    plan: dict[str, Any] | None
    code: str
    verdict: Verdict
    changes: tuple[ChangeView, ...] = ()
    request_problems: tuple[str, ...] = ()  # what disqualifies it whatever its code
    malformed: str | None = None  # why the request could not be read at all

    def summary(self) -> str:
        if self.malformed:
            return f"{MALFORMED}: {self.malformed}"
        extra = f" [{len(self.request_problems)} request problems]" if self.request_problems else ""
        p = self.plan or {}
        if not p:
            return f"{self.verdict.kind}: {self.function} carries no study plan{extra}"
        local = (
            f"{p['local_steps']} steps"
            if p.get("local_steps")
            else f"{p.get('local_epochs')} epochs"
        )
        return (
            f"{self.verdict.kind}: {p.get('model')} on {p.get('task')}, {p.get('rounds')} "
            f"rounds x {local}, batch {p.get('batch_size')}, "
            f"epsilon {p.get('epsilon')} at delta {p.get('delta')}{extra}"
        )

    def __repr__(self) -> str:
        who = self.scientist or "(unknown)"
        return f"RequestView({self.id[:12]} {self.status} from {who}: {self.summary()})"

    def _repr_html_(self) -> str:
        rows = {
            "request": self.id,
            "status": self.status,
            "from": self.scientist or "(unknown)",
            "submitted": self.submitted,
            "summary": self.summary(),
            "verdict": "; ".join((self.verdict.kind, *self.verdict.reasons)),
        }
        return _html_table(rows)

    @classmethod
    def unreadable(cls, request_id: str, reason: str) -> RequestView:
        """A request the operator's tools could not read: shown, never approved."""
        verdict = Verdict(CUSTOM, ("the request could not be read",))
        return cls(
            id=request_id,
            status=MALFORMED,
            scientist="",
            function="",
            submitted="",
            plan=None,
            code="",
            verdict=verdict,
            malformed=reason,
        )


@dataclass(frozen=True)
class Review:
    """Everything `show` prints: the request, its cost here, what blocks it, the diff."""

    view: RequestView
    projection: Projection | None
    problems: tuple[str, ...]  # why approve would refuse (without an override)
    diff: str  # against the same scientist's previously approved request; "" if none

    def __repr__(self) -> str:
        decision = f"REFUSED ({len(self.problems)} problems)" if self.problems else "allowed"
        return f"Review({self.view.id[:12]} {self.view.status}: approve would be {decision})"

    def _repr_html_(self) -> str:
        rows = {
            "request": self.view.id,
            "from": self.view.scientist or "(unknown)",
            "summary": self.view.summary(),
            "privacy": "; ".join(self.projection.lines()) if self.projection else "",
            "approve would be": "REFUSED: " + "; ".join(self.problems)
            if self.problems
            else "allowed",
        }
        return _html_table(rows) + f"<pre>{html.escape(self.view.code)}</pre>"

    def to_dict(self) -> dict[str, Any]:
        v = self.view
        return {
            "id": v.id,
            "status": v.status,
            "scientist": v.scientist,
            "submitted": v.submitted,
            "function": v.function,
            "verdict": v.verdict.kind,
            "reasons": list(v.verdict.reasons),
            "plan": v.plan,
            "plan_error": v.verdict.plan_error,
            "malformed": v.malformed,
            "changes": [
                {"kind": c.kind, "summary": c.summary, "problem": c.problem} for c in v.changes
            ],
            "projection": self.projection.to_dict() if self.projection else None,
            "problems": list(self.problems),
            "code": v.code,
            "diff": self.diff,
        }


def _html_table(rows: dict[str, str]) -> str:
    """Two columns for a notebook; every value escaped (most of it is the scientist's)."""
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{cells}</table>"


def _url(data_dir: Path, hospital: str) -> str:
    """The hospital's URL: from the local federation's file, else from the hospital's own
    `site.json` (written by `init` and `serve` for a hospital that runs on its own)."""
    from datasites.site.paths import SITE_FILE, SiteSettings

    path = data_dir / FEDERATION_FILE
    if path.exists():
        for entry in json.loads(path.read_text())["hospitals"]:
            if entry["name"] == hospital:
                return entry["url"]
    try:
        site = SiteSettings.read_root(data_dir / hospital)
    except ValueError as error:
        raise OperatorError(str(error)) from None
    if site is not None:
        return site.url
    if path.exists():
        raise OperatorError(f"{hospital} is not in {path}; check --hospital.")
    raise OperatorError(
        f"{path} does not exist and {hospital} has no {SITE_FILE}; start it with python "
        "launch.py or python -m datasites serve."
    )


class Operator:
    """Log in as one hospital's operator and act on its requests."""

    def __repr__(self) -> str:
        return f"Operator({self.root.name} as {self.name})"

    def __init__(self, root: Path, client: Any, name: str | None = None) -> None:
        self.root = root
        self.client = client
        self.name = name or getpass.getuser()  # who decides, for the audit log
        self.audit_log = AuditLog.open(root)
        self._rows: dict[str, int] = {}
        self._read: dict[str, _Read] = {}
        self._users: dict[str, tuple[str, str]] = {}
        self._url = ""  # set by `open`, which read it from the federation file

    @property
    def url(self) -> str:
        """The datasite's URL as its federation file lists it ("" when the operator was not
        made by `open`): what an invitation tells a scientist to connect to."""
        return self._url

    @cached_property
    def site(self) -> Site:
        """This datasite's id and its assets' action ids, which a request must bind."""
        with quiet():
            hosted = {d.name: d for d in self.client.datasets.get_all()}
            assets = {
                name: (
                    str(hosted[name].assets["train"].action_id),
                    str(hosted[name].assets["test"].action_id),
                )
                for name in DATASETS
                if name in hosted
            }
        return Site(server_id=str(self.client.id), assets=assets)

    def account(self, request: Any) -> tuple[str, str]:
        """(email, role) of the account that sent `request`; NO_ACCOUNT for none.

        The datasite fills a request's requester from the key that signed the submission
        (its own user lookup), so a caller with no account cannot pass for the scientist;
        the role is read from this hospital's own account list.
        """
        email = getattr(request, "requesting_user_email", None)
        if not isinstance(email, str) or not email:
            return NO_ACCOUNT, "GUEST"
        if email not in self._users:
            with quiet():
                users = self.client.users.get_all()
            self._users = {str(u.email): (str(u.email), u.role.name) for u in users}
        return self._users.get(email, (NO_ACCOUNT, "GUEST"))

    @cached_property
    def hospital(self) -> Hospital:
        """The hospital's policy and ledger, loaded on first use (the ledger pulls in
        Opacus, which listing requests does not need)."""
        from datasites.site.hospital import Hospital

        return Hospital.open(self.root)

    @classmethod
    def open(cls, data_dir: str | Path, hospital: str, *, name: str | None = None) -> Operator:
        data_dir = Path(data_dir).resolve()
        root = data_dir / hospital
        if not (root / IDENTITY_FILE).exists():
            raise OperatorError(f"{root} holds no datasite; check --data-dir and --hospital.")
        from urllib.parse import urlsplit

        from datasites.site.paths import SiteSettings

        url = _url(data_dir, hospital)
        parts = urlsplit(url)
        try:  # https: the operator trusts exactly the certificate in the hospital's folder
            site = SiteSettings.read_root(root)
            if site is not None and site.url == url:
                # Reached at the address it serves on: its public DNS name (the URL that
                # invitations carry) need not resolve on the hospital's own machine.
                host, port, tls = site.host, site.port, site.tls
            else:
                host, port = parts.hostname or "", int(parts.port or 0)
                tls = parts.scheme == "https"
            config = HospitalConfig(hospital, port, data_dir, host=host, tls=tls)
        except ValueError as error:
            raise OperatorError(f"{hospital}'s URL {url!r} cannot be used: {error}") from None
        if config.tls and not config.tls_cert_path.exists():
            raise OperatorError(
                f"{hospital} is served over TLS but {config.tls_cert_path} is missing; "
                "restore it from the hospital's backup."
            )
        identity = Identity.load_or_create(config.identity_path, hospital)
        from datasites.server.admin_key import admin_client

        try:
            with quiet():
                client = admin_client(config, identity)
        except Exception:
            raise OperatorError(
                f"{hospital} does not answer at {url}; start it with python launch.py or "
                "python -m datasites serve."
            ) from None
        operator = cls(root, client, name)
        operator._url = url
        return operator

    # -- requests ----------------------------------------------------------------------

    def requests(self) -> list[RequestView]:
        """Every request; one that cannot be read is listed as malformed, with its reason."""
        return [self._safe_view(r) for r in self.client.requests]

    def _safe_view(self, request: Any) -> RequestView:
        try:
            return self._view(request)
        except Exception as error:  # a hostile request must not stop the operator
            return RequestView.unreadable(str(getattr(request, "id", "?")), _reason(error))

    def request(self, request_id: str) -> Any:
        """The syft request whose id starts with `request_id` (unique prefix)."""
        matches = [r for r in self.client.requests if str(r.id).startswith(request_id)]
        if len(matches) != 1 or not request_id:
            found = "several" if len(matches) > 1 else "no"
            raise OperatorError(f"{found} requests match id {request_id!r}; see the requests list.")
        return matches[0]

    def show(self, request_id: str) -> Review:
        """The full review of one request; recorded as shown in the audit log."""
        review = self.review(self.request(request_id))
        self.audit_log.append(
            Event.REQUEST_SHOWN,
            request=review.view.id,
            operator=self.name,
            verdict=review.view.verdict.kind,
        )
        return review

    def review(self, request: Any) -> Review:
        view = self._safe_view(request)
        if view.malformed:
            return Review(view, None, (f"malformed request: {view.malformed}",), "")
        try:
            return self._review(view)
        except Exception as error:
            problem = f"malformed request: the review failed ({_reason(error)})"
            return Review(view, None, (problem,), "")

    def _review(self, view: RequestView) -> Review:
        parsed = self._plan(view)
        projection = None
        if parsed is not None:
            from datasites.governance.projection import project

            projection = project(self.hospital, parsed, self._training_rows(parsed))
        # The other approved requests, listed once: for reused study ids and for the diff.
        others = [r for r in self.requests() if r.id != view.id]
        approved = [r for r in others if r.status == "approved"]
        problems = self._problems(view, parsed, projection, others)
        return Review(view, projection, tuple(problems), _diff(view, approved))

    def _plan(self, view: RequestView) -> Plan | None:
        from datasites.contract.plan import Plan, PlanError

        if view.plan is None or view.verdict.plan_error:
            return None
        try:
            return Plan.from_dict(view.plan)
        except PlanError:
            return None

    def _problems(
        self,
        view: RequestView,
        plan: Plan | None,
        projection: Projection | None,
        others: list[RequestView],
    ) -> list[str]:
        """Why approving would be refused; custom code comes first (it needs an override).
        `others` are this hospital's other requests."""
        problems = []
        if not view.verdict.vetted:
            problems.append("custom code: " + "; ".join(view.verdict.reasons))
        problems += [f"request: {p}" for p in view.request_problems]
        if view.verdict.plan_error:
            problems.append(f"invalid plan: {view.verdict.plan_error}")
        if plan is not None:
            problems += [f"policy: {p}" for p in self.hospital.policy.study.violations(view.plan)]
            delta = self.hospital.policy.budget.delta
            if plan.delta != delta:
                problems.append(
                    f"policy: delta {plan.delta:g} differs from this hospital's {delta:g}"
                )
            problems += self._ownership(view, plan, others)
            approved = [r for r in others if r.status == "approved"]
            problems += self._reused_id(view, plan, approved)
            if plan.secure:
                problems += [f"partners: {p}" for p in self._partner_problems(plan)]
        if projection is not None:
            study = self.hospital.policy.study
            problems += [f"policy: {p}" for p in study.compute_violations(projection.compute)]
        if projection is not None and projection.calibrated and not projection.within_cap:
            problems.append(
                f"budget: {projection.dataset} would reach epsilon {projection.total_after:.3f}, "
                f"above its cap {projection.cap:g}"
            )
        return problems

    def _partner_problems(self, plan: Plan) -> list[str]:
        """A secure plan's partners against this hospital's registry: an invented partner
        key is how a scientist would unmask a real hospital (`datasites.site.partners`)."""
        identity = Identity.load_or_create(self.hospital.root / IDENTITY_FILE, self.hospital.name)
        registered = load_partners(self.hospital.root)
        return partner_violations(
            plan.partners, registered, self.hospital.name, identity.verify_key
        )

    def _ownership(self, view: RequestView, plan: Plan, others: list[RequestView]) -> list[str]:
        """A study belongs to the account that submits it: the plan must name that account,
        and its id must not be another account's (registered here, or in another request
        that is not denied). The runtime refuses both too (issue 27)."""
        problems = []
        if plan.scientist != view.scientist:
            problems.append(
                f"owner: the plan names {plan.scientist} as its scientist, but the request "
                f"comes from {view.scientist or 'no account'}"
            )
        owner = self.hospital.ledger.owner(plan.study_id)
        if owner is not None and owner != view.scientist:
            problems.append(f"owner: study id {plan.study_id} belongs to {owner} here")
        others = sorted(
            {
                r.scientist
                for r in others
                if r.status != "denied"
                and r.scientist != view.scientist
                and (r.plan or {}).get("study_id") == plan.study_id
            }
        )
        if others and owner is None:
            problems.append(
                f"owner: study id {plan.study_id} is also in a request from "
                f"{', '.join(others)}; a study id belongs to one account, deny one of them"
            )
        return problems

    def _reused_id(self, view: RequestView, plan: Plan, approved: list[RequestView]) -> list[str]:
        """A second request under an approved study id, with another plan, is how a
        scientist would change DP parameters after approval; the runtime refuses it too."""
        stored = self.hospital.ledger.study(plan.study_id)
        if stored is not None and stored.plan_sha256 not in ("", plan.digest()):
            return [f"study id {plan.study_id} already ran here with a different plan"]
        others = [
            r
            for r in approved
            if (r.plan or {}).get("study_id") == plan.study_id and r.code != view.code
        ]
        if others:
            return [
                f"study id {plan.study_id} was approved before ({others[0].id[:12]}) "
                "with other code"
            ]
        return []

    def _training_rows(self, plan: Plan) -> int:
        """This hospital's training rows for the plan, as the runtime will count them: from
        the upload manifest, or (older manifests) by fetching the private asset."""
        key = f"{plan.task}/{plan.label}"
        manifest = self.root / MANIFEST_FILE
        if key not in self._rows and manifest.exists():
            counts = json.loads(manifest.read_text()).get(plan.task, {}).get("train", {})
            if "usable_rows" in counts:
                self._rows[key] = int(counts["usable_rows"])
        if key not in self._rows:
            from datasites.contract.encoding import training_rows

            with quiet():
                train = self.client.datasets[plan.task].assets["train"].data
            self._rows[key] = training_rows(plan, train)
        return self._rows[key]

    def _view(self, request: Any) -> RequestView:
        """The request as the operator sees it; its changes and code are read and verified
        once per operator session (a request's changes never change, its status does)."""
        request_id = str(request.id)
        if request_id not in self._read:
            self._read[request_id] = self._read_request(request)
        read = self._read[request_id]
        return RequestView(
            id=request_id,
            status=request_status(request),
            scientist=read.requester,
            function=read.function,
            submitted=str(getattr(request, "request_time", "")),
            plan=read.verdict.plan,
            code=read.source,
            verdict=read.verdict,
            changes=read.changes,
            request_problems=read.problems,
        )

    def _read_request(self, request: Any) -> _Read:
        """Who asked (by verified key), every change, and the verdict on the code."""
        email, role = self.account(request)
        problems = []
        if email == NO_ACCOUNT:
            problems.append("the requester has no account at this hospital")
        elif role != "DATA_SCIENTIST":
            problems.append(f"the requester's account is {role}, not a data scientist")
        shape = inspect_request(request, self.site, None)
        source, function = _source(shape.code)
        verdict = classify(source, function or None)
        task = (verdict.plan or {}).get("task")
        if isinstance(task, str) and task in self.site.assets:
            shape = inspect_request(request, self.site, task)
        return _Read(email, function, source, verdict, shape.changes, (*problems, *shape.problems))

    # -- decisions ---------------------------------------------------------------------

    def approve(
        self, request_id: str, *, allow_custom_code: bool = False, by: str | None = None
    ) -> RequestView:
        """Approve if nothing blocks it; custom code only with `allow_custom_code`."""
        return self._approve(request_id, allow_custom_code, by).view

    def _approve(self, request_id: str, allow_custom_code: bool, by: str | None) -> Review:
        request = self.request(request_id)
        review = self.review(request)
        view = review.view
        blocking = [
            p for p in review.problems if not (allow_custom_code and p.startswith("custom code"))
        ]
        if view.status != PENDING:
            blocking.insert(0, f"the request is already {view.status}")
        if blocking:
            self.audit_log.append(
                Event.REFUSED,
                layer="operator",
                request=view.id,
                operator=by or self.name,
                reason="; ".join(blocking),
            )
            hint = (
                ""
                if view.verdict.vetted or allow_custom_code
                else (" (pass --allow-custom-code only after reading every line)")
            )
            raise OperatorError(f"not approved: {'; '.join(blocking)}{hint}.")
        self._apply(request, view)
        self.audit_log.append(
            Event.APPROVED,
            request=view.id,
            study=(view.plan or {}).get("study_id"),
            scientist=view.scientist,
            operator=by or self.name,
            verdict=view.verdict.kind,
            override=allow_custom_code and not view.verdict.vetted,
            projected_epsilon=review.projection.study_epsilon if review.projection else None,
        )
        return Review(self._view(request), review.projection, review.problems, review.diff)

    def _apply(self, request: Any, view: RequestView) -> None:
        """Apply the request's one change, checked above to be the vetted code's approval.

        Not syft's `Request.approve()`: that applies every change a request carries. The
        datasite refuses to apply anything else for a scientist too (`datasites.server.guard`).
        """
        from syft.service.response import SyftError

        if len(view.changes) != 1:
            raise OperatorError(f"not approved: the request carries {len(view.changes)} changes.")
        with quiet():
            result = self.client.api.services.request.apply(request.id)
        if isinstance(result, SyftError):
            self.audit_log.append(
                Event.REFUSED,
                layer="operator",
                request=view.id,
                operator=self.name,
                reason=_reason(result),
            )
            raise OperatorError(f"not approved: {_reason(result)}")

    def approve_line(self, request_id: str, *, allow_custom_code: bool = False) -> str:
        """Approve and say what was approved and what it costs here (the CLI's output)."""
        review = self._approve(request_id, allow_custom_code, None)
        view, p = review.view, review.projection
        cost = (
            ""
            if p is None
            else (
                f"; costs epsilon {p.study_epsilon:.3f} here ({p.n} rows), {p.dataset} "
                f"{p.spent:.2f} -> {p.total_after:.2f} of cap {p.cap:g}"
            )
        )
        return f"{self.hospital.name} approved {view.id[:12]} from {view.scientist}: " + (
            f"{view.summary()}{cost}"
        )

    def deny(self, request_id: str, reason: str, *, by: str | None = None) -> RequestView:
        if not reason.strip():
            raise OperatorError("a denial needs a reason the scientist can act on; pass --reason.")
        request = self.request(request_id)
        with quiet():
            request.deny(reason=reason)
        view = self._view(request)
        self.audit_log.append(
            Event.DENIED,
            request=view.id,
            study=(view.plan or {}).get("study_id"),
            scientist=view.scientist,
            operator=by or self.name,
            reason=reason,
        )
        return view

    # -- budget and audit --------------------------------------------------------------

    def budget(self) -> Budget:
        """Per dataset: cap, composed spent (PLD, and RDP as a cross-check; each of the
        training and test parts, which compose in parallel), remaining, and the studies and
        events behind."""
        ledger = self.hospital.ledger
        datasets = {}
        for dataset in DATASETS:
            studies = tuple(
                StudySpend(
                    study_id=s.study_id,
                    scientist=s.scientist,
                    epsilon=s.epsilon,
                    rounds=s.rounds,
                    noise_multiplier=s.noise_multiplier,
                    spent=ledger.study_spent(s.study_id),
                )
                for s in ledger.studies(dataset)
            )
            events = tuple(
                LedgerEvent(
                    study_id=sid,
                    kind=kind,
                    round=rnd,
                    noise_multiplier=e.noise_multiplier,
                    sample_rate=e.sample_rate,
                    steps=e.steps,
                )
                for sid, kind, rnd, e in ledger.events(dataset=dataset)
            )
            datasets[dataset] = DatasetBudget(
                dataset=dataset,
                cap=ledger.cap(dataset),
                spent=ledger.spent(dataset),
                spent_rdp=ledger.spent_rdp(dataset),
                parts=ledger.part_spent(dataset),
                studies=studies,
                events=events,
            )
        return Budget(self.root.name, datasets)

    def audit(self) -> AuditTrail:
        """The audit log's entries and the check of its hash chain, read together."""
        return AuditTrail(self.root.name, tuple(self.audit_log.entries()), self.audit_log.verify())


def _diff(view: RequestView, approved: list[RequestView]) -> str:
    """The diff against the same scientist's latest other approved request; "" if none."""
    earlier = [r for r in approved if r.scientist == view.scientist]
    if not earlier:
        return ""
    latest = max(earlier, key=lambda r: r.submitted)
    return code_diff(latest.code, view.code, f"approved {latest.id[:12]}", view.id[:12])


@dataclass(frozen=True)
class _Read:
    """What reading a request found; cached per operator session."""

    requester: str
    function: str
    source: str
    verdict: Verdict
    changes: tuple[ChangeView, ...]
    problems: tuple[str, ...]


def _source(code: Any) -> tuple[str, str]:
    """(source, function name) of a code object; empty for a request without code."""
    if code is None:
        return "", ""
    return str(getattr(code, "raw_code", "") or ""), str(getattr(code, "service_func_name", ""))


def _reason(error: Any) -> str:
    """A short, single-line reason from an exception or a syft error."""
    text = syft_message(error)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:200]
