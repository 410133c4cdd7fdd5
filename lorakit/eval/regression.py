"""Each candidate against its parent: worse by more than a tolerance is a regression (and can fail the command)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorakit.errors import LorakitError

if TYPE_CHECKING:
    from lorakit.eval.candidates import Candidate


class RegressionError(LorakitError):
    """A stage made the model worse and --fail-on-regression was given."""


def regressions(candidates: list[Candidate], metric: str, higher_is_better: bool,
                tolerance: float) -> list[dict[str, Any]]:
    """Each candidate against its parent; worse means worse by more than `tolerance` of the parent's value (at least
    of 1.0), so a q8_0 export's third-decimal loss change is not a regression."""
    by_name = {c.name: c for c in candidates}
    rows = []
    for candidate in candidates:
        parent = by_name.get(candidate.parent or "")
        if parent is None or metric not in candidate.scores or metric not in parent.scores:
            continue
        change = candidate.scores[metric] - parent.scores[metric]
        loss_of_quality = -change if higher_is_better else change
        worse = loss_of_quality > tolerance * max(abs(parent.scores[metric]), 1.0)
        rows.append({"candidate": candidate.name, "parent": parent.name, "metric": metric,
                     "value": candidate.scores[metric], "parent_value": parent.scores[metric],
                     "change": change, "worse": worse})
    return rows


def raise_on_regression(report: dict[str, Any]) -> None:
    """--fail-on-regression: one error naming the first stage that got worse."""
    worse = [r for r in report["regressions"] if r["worse"]]
    if worse:
        first = worse[0]
        raise RegressionError(
            f"{len(worse)} regression(s): {first['candidate']} has {first['metric']} {first['value']:.4f} vs "
            f"{first['parent_value']:.4f} for its parent {first['parent']}",
            hint="inspect that stage's data and settings; eval.json in the run folder has the details",
        )
