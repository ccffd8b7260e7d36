"""The hospitals a study talks to: logged-in syft clients by name, reached in parallel.

`Study` and the submit functions use this narrow object, not `Federation`: they need to
call each hospital and fetch mocks, nothing else, so the study code does not depend on how a
federation is connected (and the modules import each other in one direction only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from datasites.contract.pinned_tls import NetworkPolicy
from datasites.contract.syft_io import quiet
from scientist.connect import FederationError, network_reason

T = TypeVar("T")


@dataclass
class HospitalPool:
    """Each hospital's syft client and the scientist's email there; studies keep their
    checkpoints under `workdir`; `network` is what every client's session was built with."""

    clients: dict[str, Any]
    emails: dict[str, str]
    workdir: Path
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    probes: dict[str, Callable[[], None]] = field(default_factory=dict)
    """hospital -> one quick request that raises if it does not answer (`connect.prober`)."""

    @property
    def hospitals(self) -> list[str]:
        return list(self.clients)

    def client(self, hospital: str) -> Any:
        if hospital not in self.clients:
            raise KeyError(f"no hospital {hospital!r}; this federation has {self.hospitals}.")
        return self.clients[hospital]

    def email(self, hospital: str) -> str:
        return self.emails[hospital]

    def unanswered(self, hospital: str) -> str | None:
        """Why the hospital does not answer now (None: it does, or it cannot be probed),
        from one quick request to its public metadata route, pinned like every other and
        bounded by the connect timeout: a hospital that went silent costs seconds, not a
        whole read timeout, in each round it misses."""
        check = self.probes.get(hospital)
        if check is None:
            return None
        try:
            check()
        except Exception as error:
            return network_reason(error, self.network) or "does not answer"
        return None

    def map(self, fn: Callable[[str, Any], T], names: list[str] | None = None) -> list[T]:
        """fn(name, client) for the named hospitals (default: all) in parallel, in order."""
        names = self.hospitals if names is None else names
        return parallel(lambda name: fn(name, self.client(name)), names)

    def mock(
        self, dataset: str, asset: str = "train", *, hospitals: list[str] | None = None
    ) -> dict[str, Any]:
        """Each hospital's mock (or the named ones'): a DataFrame (ehr) or (images, labels)."""

        def fetch(hospital: str, client: Any) -> Any:
            try:
                value = client.datasets[dataset].assets[asset].mock
            except Exception:
                raise FederationError(
                    f"{hospital} has no asset {dataset}/{asset}; see fed.datasets()."
                ) from None
            return (value["images"], value["labels"]) if isinstance(value, dict) else value

        names = hospitals or self.hospitals
        return dict(zip(names, self.map(fetch, names), strict=True))


def parallel(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """fn over items in threads, syft's output silenced once around the whole block."""
    with quiet(), ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))
