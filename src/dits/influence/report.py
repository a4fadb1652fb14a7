"""What an influence estimation reports, per group and globally, and rank agreement between estimates.

Pure Python + numpy (no torch), so reports can be read and compared anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dits.utils import pearson, spearman

TIE_DECIMALS = 12
"""Influences equal to this many decimals count as tied (means of the same scores in another order)."""


@dataclass
class GroupInfluence:
    """One probed group.

    ``influence``: F(θ* + step) − F(θ*) on the ``tasks`` validation tasks evaluated (exact, racing), or
    the first-order estimate (first-order mode). ``score_after``: F(θ* + step) on those tasks.
    ``changed``: validation dialogues whose text or answer differs from θ*'s. ``loss``: the group's own DPO
    loss at θ*. Analysis-only proxies: ``loss_proxy`` = held-out DPO loss after − before the step (None
    without held-out pairs); ``first_order`` = ⟨score-weighted log-likelihood gradient of θ*'s validation
    dialogues, step⟩ (see `dits.influence.estimator`; None when not computed).
    """

    group: str
    pair_ids: list[str]
    influence: float
    score_after: float | None
    tasks: int
    changed: int
    dialogues: int
    tokens: int
    loss: float
    loss_proxy: float | None
    first_order: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupInfluence:
        return cls(**data)


@dataclass
class CalibrationRow:
    """Probe step size ``lr`` tried on ``groups`` groups: fraction of validation dialogues changed vs θ*,
    mean validation score of the probed adapters, its difference to F(θ*), distinct group scores."""

    lr: float
    groups: int
    change_fraction: float
    mean_score: float
    score_delta: float
    distinct_scores: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InfluenceReport:
    """A whole estimation run (only the groups probed in this run; resumed groups are not repeated)."""

    estimator: str
    base_score: float
    base_scores: list[float]
    validation_ids: list[str]
    lr: float
    optimizer: str
    calibration: list[CalibrationRow]
    calibration_note: str
    groups: list[GroupInfluence]
    warmup_losses: list[float]
    unfit_pairs: list[str]
    probe_steps: int
    probe_seconds: float
    dialogues: int
    validation_tokens: int
    wall_time: float
    extra: dict[str, Any] = field(default_factory=dict)

    def influences(self) -> dict[str, float]:
        """Group id → influence."""
        return {g.group: g.influence for g in self.groups}

    def pair_influence(self) -> dict[str, float]:
        """Pair id → the influence of its group."""
        return pair_influence(self.groups)

    @property
    def distinct_values(self) -> int:
        return len({round(g.influence, TIE_DECIMALS) for g in self.groups})

    @property
    def tie_fraction(self) -> float:
        """Fraction of groups whose influence equals another group's."""
        counts = Counter(round(g.influence, TIE_DECIMALS) for g in self.groups)
        return sum(c for c in counts.values() if c > 1) / len(self.groups) if self.groups else 0.0

    def proxy_agreement(self) -> dict[str, Agreement]:
        """Agreement of the influence with each analysis proxy over this report's groups (meaningful for
        exact runs). A helpful step lowers the held-out loss, so ``loss_proxy`` should correlate negatively."""
        influence, result = self.influences(), {}
        for name in ("first_order", "loss_proxy"):
            values = {g.group: getattr(g, name) for g in self.groups if getattr(g, name) is not None}
            if values:
                result[name] = agreement(influence, values)
        return result

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(distinct_values=self.distinct_values, tie_fraction=self.tie_fraction)
        return data


def pair_influence(groups: list[GroupInfluence]) -> dict[str, float]:
    """Pair id → the influence of its group (for selection and for the search trees)."""
    return {pair_id: g.influence for g in groups for pair_id in g.pair_ids}


@dataclass(frozen=True)
class Agreement:
    """Rank (Spearman) and linear (Pearson) correlation of two estimates over their ``n`` common keys."""

    n: int
    spearman: float
    pearson: float


def agreement(a: Mapping[str, float], b: Mapping[str, float]) -> Agreement:
    """How well two estimates (key → value, e.g. `InfluenceReport.influences`) agree on common keys."""
    keys = sorted(a.keys() & b.keys())
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    return Agreement(len(keys), spearman(x, y), pearson(x, y))
