"""The data scientist's library: connect to hospital datasites, explore their mocks,
and (next) run federated DP training studies. Runs outside the hospitals' trust boundary."""

from scientist.connect import FederationError
from scientist.federation import Federation

__all__ = ["Federation", "FederationError"]
