"""The data scientist's view of a federation: many hospital datasites in one object.

Everything here goes through syft as the scientist's own account, so it can only see what
a hospital lets a data scientist see: dataset metadata and mocks. Hospitals are contacted
in parallel because a federation is only as responsive as its slowest member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from datasites.client.connection import load_syft
from datasites.contract.pinned_tls import NetworkPolicy
from scientist.config import StudyConfig
from scientist.connect import (
    FederationError,
    Password,
    login_client,
    prober,
    resolve_logins,
)
from scientist.pool import HospitalPool, parallel
from scientist.result import facts_html, names_text
from scientist.study import Study
from scientist.submit import reopen_study, submit_study

if TYPE_CHECKING:
    from scientist.samples import SampleGrid

T = TypeVar("T")


class Federation:
    """Connected hospitals, by name, each a syft client logged in as the scientist.

    `workdir` holds the scientist's study checkpoints (default: `<data dir>/studies` when
    connected through a local data dir, else `./studies`).
    """

    def __init__(
        self,
        clients: dict[str, Any],
        emails: dict[str, str],
        workdir: Path,
        network: NetworkPolicy | None = None,
        probes: dict[str, Callable[[], None]] | None = None,
    ) -> None:
        network = network or NetworkPolicy()
        self.pool = HospitalPool(clients, emails, Path(workdir), network, probes or {})

    @property
    def workdir(self) -> Path:
        return self.pool.workdir

    def __repr__(self) -> str:
        """One line from what the scientist holds locally: a repr never calls a hospital."""
        return (
            f"Federation({len(self.hospitals)} hospitals: {names_text(self.hospitals)}; "
            f"workdir {str(self.workdir)!r})"
        )

    def _repr_html_(self) -> str:
        emails = self.pool.emails
        facts = {h: f"logged in as {emails.get(h, '?')}" for h in self.hospitals}
        return facts_html(
            f"federation of {len(self.hospitals)} hospitals, studies in {self.workdir}", facts
        )

    @classmethod
    def connect(
        cls,
        source: str | Path | Sequence[str | Path] = ".datasites",
        *,
        email: str | None = None,
        password: Password = None,
        timeout: float = 10.0,
        workdir: str | Path | None = None,
        network: NetworkPolicy | None = None,
    ) -> Federation:
        """Log in to every hospital in parallel; name every one that fails, in one error.

        `source` is a list of invitation files (or a folder of them), a local data dir or
        federation file, or URLs (see `scientist.connect`). `timeout` bounds the first
        probe of each hospital; `network` (`datasites.contract.pinned_tls.NetworkPolicy`)
        sets every later call's connect and read timeouts and its retries: a hospital that
        does not answer a study's call within `network.read_timeout` drops out of that round.
        """
        network = network or NetworkPolicy()
        logins = resolve_logins(source, email=email, password=password)
        load_syft()
        outcomes = parallel(lambda login: _try(login_client, login, network, timeout), logins)
        failures = [str(o) for o in outcomes if isinstance(o, FederationError)]
        if failures:
            raise FederationError(
                f"could not connect to {len(failures)} of {len(logins)} hospitals: "
                + "; ".join(failures)
                + ". Check that their datasites are running, their certificates and the logins."
            )
        clients = {client.name: client for client in outcomes}
        pairs = list(zip(outcomes, logins, strict=True))
        emails = {client.name: login.email for client, login in pairs}
        probes = {client.name: prober(login, network) for client, login in pairs}
        folder = Path(workdir) if workdir else _default_workdir(source)
        return cls(clients, emails, folder, network, probes)

    @property
    def hospitals(self) -> list[str]:
        return self.pool.hospitals

    def client(self, hospital: str) -> Any:
        return self.pool.client(hospital)

    def submit(self, config: StudyConfig, *, hospitals: list[str] | None = None) -> Study:
        """Send the study's code request to every hospital (or the named ones)."""
        return submit_study(self.pool, config, hospitals or self.hospitals)

    def resume(self, study_id: str) -> Study:
        """Reopen a submitted study from its checkpoint; `run()` continues where it stopped."""
        return reopen_study(self.pool, study_id)

    def email(self, hospital: str) -> str:
        return self.pool.email(hospital)

    def datasets(self) -> pd.DataFrame:
        """One row per hospital, dataset and asset, with mock size and description."""

        def rows(hospital: str, client: Any) -> list[dict[str, Any]]:
            out = []
            for dataset in client.datasets.get_all():
                for asset in dataset.asset_list:
                    out.append(
                        {
                            "hospital": hospital,
                            "dataset": dataset.name,
                            "asset": asset.name,
                            "mock rows": _count(asset.mock),
                            "description": _text(dataset.description),
                        }
                    )
            return out

        table = [r for rs in self.pool.map(rows) for r in rs]
        return pd.DataFrame(
            table, columns=["hospital", "dataset", "asset", "mock rows", "description"]
        )

    def mock(
        self, dataset: str, asset: str = "train", *, hospitals: list[str] | None = None
    ) -> dict[str, Any]:
        """Each hospital's mock (or the named ones'): a DataFrame (ehr) or (images, labels)."""
        return self.pool.mock(dataset, asset, hospitals=hospitals)

    def show_samples(self, dataset: str, path: str | Path, *, per_class: int = 3) -> SampleGrid:
        """Write a PNG grid of mock images (rows are classes, columns hospitals) to `path`
        and return it as a `SampleGrid`: `.path` is the PNG, `.figure` the matplotlib
        Figure, and a notebook shows the picture inline."""
        from scientist.samples import sample_grid

        if dataset != "pathmnist":
            raise ValueError(f"show_samples draws images; {dataset!r} has none, use mock().")
        return sample_grid(self.mock(dataset), Path(path), per_class=per_class)


def _default_workdir(source: Any) -> Path:
    if isinstance(source, (str, Path)) and not str(source).startswith("http"):
        folder = Path(source)
        return (folder if folder.is_dir() else folder.parent) / "studies"
    return Path("studies")


def _try(fn: Callable[..., T], *args: Any) -> T | FederationError:
    try:
        return fn(*args)
    except FederationError as error:
        return error


def _count(value: Any) -> int:
    return len(value["labels"]) if isinstance(value, dict) else len(value)


def _text(description: Any) -> str:
    return str(getattr(description, "text", description) or "")
