"""A hospital's site policy: `<data-dir>/<hospital>/policy.toml`.

The hospital, not the scientist, decides how much privacy its data may lose in total and at
which delta it accounts. The file is plain TOML so an operator can read and edit it; unknown
keys are an error, because a misspelt limit silently ignored is a limit not enforced.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

POLICY_FILE = "policy.toml"

DEFAULT_POLICY = """\
# Site policy of this hospital's datasite. Unknown keys are an error.

[budget]
# Total epsilon each dataset may lose, over all studies of all scientists (composed).
epsilon_cap = 10.0
# The delta at which this hospital accounts; studies must use the same delta.
delta = 1e-5
"""


class PolicyError(ValueError):
    """policy.toml is malformed; the message names the key and the file."""


@dataclass(frozen=True)
class BudgetPolicy:
    epsilon_cap: float = 10.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (0 < self.epsilon_cap < math.inf):
            raise PolicyError(f"budget.epsilon_cap must be positive, found {self.epsilon_cap}.")
        if not (0 < self.delta < 1):
            raise PolicyError(f"budget.delta must be in (0, 1), found {self.delta}.")


@dataclass(frozen=True)
class Policy:
    budget: BudgetPolicy = BudgetPolicy()

    @classmethod
    def load(cls, root: Path) -> Policy:
        """The hospital's policy, or the defaults when it has no policy.toml."""
        path = root / POLICY_FILE
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise PolicyError(f"{path} is not valid TOML ({error}); fix or delete it.") from None
        return cls(**_sections(raw, {"budget": BudgetPolicy}, path))

    @staticmethod
    def write_default(root: Path) -> Path:
        """Create policy.toml with the defaults, unless the operator already has one."""
        path = root / POLICY_FILE
        if not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            path.write_text(DEFAULT_POLICY)
        return path


def _sections(raw: dict[str, Any], types: dict[str, type], path: Path) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise PolicyError(f"{path} has unknown sections: {', '.join(unknown)}.")
    out = {}
    for name, kind in types.items():
        section = raw.get(name, {})
        allowed = {f.name for f in fields(kind)}
        extra = sorted(set(section) - allowed)
        if extra:
            keys = ", ".join(f"{name}.{k}" for k in extra)
            raise PolicyError(f"{path} has unknown keys: {keys}; allowed: {sorted(allowed)}.")
        out[name] = kind(**section)
    return out
