"""A hospital operator's view of its datasite: requests, decisions, the privacy budget.

The command line (`python -m datasites ...`) and notebooks use this one class, so both show
the same facts and make the same checks.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasites.config import HospitalConfig
from datasites.identity import Identity
from datasites.review import extract_plan

if TYPE_CHECKING:
    from datasites.runtime import Hospital

FEDERATION_FILE = "federation.json"


class OperatorError(RuntimeError):
    """An operator command could not be carried out; one sentence says why."""


@dataclass(frozen=True)
class RequestView:
    """One code request as the operator sees it."""

    id: str
    status: str
    scientist: str
    function: str
    submitted: str
    plan: dict[str, Any] | None
    code: str

    def summary(self) -> str:
        p = self.plan or {}
        if not p:
            return f"{self.function}: not a study plan"
        return (f"{p.get('model')} on {p.get('task')}, {p.get('rounds')} rounds x "
                f"{p.get('local_epochs')} epochs, batch {p.get('batch_size')}, "
                f"epsilon {p.get('epsilon')} at delta {p.get('delta')}")  # fmt: skip


def _url(data_dir: Path, hospital: str) -> str:
    path = data_dir / FEDERATION_FILE
    if not path.exists():
        raise OperatorError(f"{path} does not exist; start the datasites with python launch.py.")
    for entry in json.loads(path.read_text())["hospitals"]:
        if entry["name"] == hospital:
            return entry["url"]
    raise OperatorError(f"{hospital} is not in {path}; check --hospital.")


class Operator:
    """Log in as one hospital's operator and act on its requests."""

    def __init__(self, root: Path, client: Any) -> None:
        self.root = root
        self.client = client

    @cached_property
    def hospital(self) -> Hospital:
        """The hospital's policy and ledger, loaded on first use (the ledger pulls in
        Opacus, which listing or approving requests does not need)."""
        from datasites.runtime import Hospital

        return Hospital.open(self.root)

    @classmethod
    def open(cls, data_dir: str | Path, hospital: str) -> Operator:
        data_dir = Path(data_dir).resolve()
        root = data_dir / hospital
        if not (root / "identity.json").exists():
            raise OperatorError(f"{root} holds no datasite; check --data-dir and --hospital.")
        url = _url(data_dir, hospital)
        port = int(url.rsplit(":", 1)[1])
        config = HospitalConfig(name=hospital, port=port, data_dir=data_dir)
        identity = Identity.load_or_create(config.identity_path, hospital)
        from datasites.provision import login_admin

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                client = login_admin(config, identity)
        except Exception:
            raise OperatorError(
                f"{hospital} does not answer at {url}; start it with python launch.py."
            ) from None
        return cls(root, client)

    def requests(self) -> list[RequestView]:
        return [_view(r) for r in self.client.requests]

    def request(self, request_id: str) -> Any:
        """The syft request whose id starts with `request_id` (unique prefix)."""
        matches = [r for r in self.client.requests if str(r.id).startswith(request_id)]
        if len(matches) != 1:
            found = "no" if not matches else "several"
            raise OperatorError(f"{found} requests match id {request_id!r}; see the requests list.")
        return matches[0]

    def show(self, request_id: str) -> RequestView:
        return _view(self.request(request_id))

    def approve(self, request_id: str) -> RequestView:
        request = self.request(request_id)
        with contextlib.redirect_stdout(io.StringIO()):
            request.approve()
        return _view(request)

    def approve_line(self, request_id: str) -> str:
        """Approve and say what was approved and what it may cost here (the CLI's output)."""
        view = self.approve(request_id)
        dataset = (view.plan or {}).get("task", "")
        spent = self.hospital.ledger.spent(dataset) if dataset else 0.0
        cap = self.hospital.ledger.cap(dataset) if dataset else 0.0
        return (
            f"{self.hospital.name} approved {view.id[:12]} from {view.scientist}: "
            f"{view.summary()}; {dataset} spent so far {spent:.2f} of cap {cap:.1f}"
        )

    def deny(self, request_id: str, reason: str) -> RequestView:
        if not reason.strip():
            raise OperatorError("a denial needs a reason the scientist can act on; pass --reason.")
        request = self.request(request_id)
        with contextlib.redirect_stdout(io.StringIO()):
            request.deny(reason=reason)
        return _view(request)

    def budget(self) -> dict[str, dict[str, float]]:
        ledger = self.hospital.ledger
        return {d: {"cap": ledger.cap(d), "spent": ledger.spent(d),
                    "remaining": ledger.cap(d) - ledger.spent(d)}
                for d in ("ehr", "pathmnist")}  # fmt: skip


def _view(request: Any) -> RequestView:
    code = request.code
    source = getattr(code, "raw_code", "") or ""
    return RequestView(
        id=str(request.id),
        status=str(request.status.name).lower(),
        scientist=str(getattr(request, "requesting_user_email", "") or ""),
        function=str(getattr(code, "service_func_name", "")),
        submitted=str(getattr(request, "request_time", "")),
        plan=extract_plan(source),
        code=source,
    )
