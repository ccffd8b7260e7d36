"""The data scientist's library: connect to hospital datasites, explore their mocks, and
run federated DP training studies. Runs outside the hospitals' trust boundary."""

from datasites.contract.pinned_tls import NetworkPolicy
from scientist.config import DPConfig, StudyConfig
from scientist.connect import FederationError
from scientist.federation import Federation
from scientist.result import StudyResult
from scientist.study import HospitalDropped, Study, StudyError

__all__ = [
    "DPConfig",
    "Federation",
    "FederationError",
    "HospitalDropped",
    "NetworkPolicy",
    "Study",
    "StudyConfig",
    "StudyError",
    "StudyResult",
]
