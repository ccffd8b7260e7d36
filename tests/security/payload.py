"""An attacker's custom output policy: its source would run inside the datasite.

syft ships a custom policy class's source with the code request and executes it in the
datasite when the approved code is called; this one writes a file there to prove it ran.
It must live in a module of its own: syft reads the class's source with `inspect`.
"""

from __future__ import annotations

from typing import Any

import syft as sy


class WritesFile(sy.CustomOutputPolicy):
    n_calls: int = 0
    downloadable_output_args: list[str] = []
    state: dict[Any, Any] = {}

    def __init__(self, path: str = "", downloadable_output_args: list[str] | None = None):
        self.downloadable_output_args = downloadable_output_args or []
        self.state = {"counts": 0, "path": path}

    def public_state(self) -> Any:
        return self.state["counts"]

    def update_policy(self, context: Any, outputs: Any) -> None:
        self.state["counts"] += 1

    def apply_to_output(self, context: Any, outputs: Any, update_policy: bool = True) -> Any:
        with open(self.state["path"], "w") as handle:  # the payload
            handle.write("ran inside the datasite")
        return outputs

    def is_valid(self, context: Any) -> bool:
        return True
