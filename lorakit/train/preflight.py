"""Before loading weights: estimate the run's GPU memory and stop early on a GPU that is too small."""

from __future__ import annotations

from typing import Any


def preflight(recipe, device: str, enabled: bool = True) -> dict[str, Any] | None:
    return None
