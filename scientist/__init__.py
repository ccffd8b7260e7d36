"""The data scientist's library: connect to hospital datasites, explore their mocks, and
run federated DP training studies. Runs outside the hospitals' trust boundary."""

from scientist.config import DPConfig, StudyConfig
from scientist.connect import FederationError
from scientist.federation import Federation
from scientist.result import StudyResult
from scientist.study import Study, StudyError

__all__ = [
    "DPConfig",
    "Federation",
    "FederationError",
    "Study",
    "StudyConfig",
    "StudyError",
    "StudyResult",
]
