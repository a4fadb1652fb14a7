"""What an influence estimation reports, per group and per iteration, and rank agreement between estimates.

Pure Python + numpy (no torch), so reports can be read and compared anywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dits.utils import pearson, spearman

TIE_DECIMALS = 12
"""Influences equal to this many decimals count as tied (means of the same scores in another order)."""


@dataclass
class GroupInfluence:
    """One probed group.

    ``influence``: the change of the validation metric after one step from θ* — F(θ* + step) − F(θ*), or
    with a central difference [F(θ* + step) − F(θ* − step)] / 2 — over the ``tasks`` validation units
    (task × sample) measured; the first-order estimate in first-order mode. A racing group eliminated
    after a round (``eliminated_after`` units) never ranks above a group that beat it there (its value is
    capped by theirs). ``score_after``: F(θ* + step) on those units. ``changed``: units whose dialogue
    differs from θ*'s. ``loss``: the group's DPO loss at θ*. Analysis-only proxies: ``loss_proxy`` =
    held-out DPO loss after − before the step (None without held-out pairs); ``first_order`` =
    ⟨score-weighted log-likelihood gradient of θ*'s validation dialogues, step⟩ (None when not computed).
    ``pair_keys``: content keys of the pairs (`dits.search.pairs.PreferencePair.key`), so that a pair whose
    chosen or rejected answer changed later is probed again.
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
    pair_keys: list[str] = field(default_factory=list)
    eliminated_after: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupInfluence:
        return cls(**data)


@dataclass
class CalibrationRow:
    """Probe step size ``lr`` tried on ``groups`` calibration groups: fraction of validation units whose
    dialogue changed, mean score of the probed adapters and its difference to F(θ*), how many distinct
    influence values the groups got and their spread (standard deviation), and whether the mean score
    stayed within the tolerance."""

    lr: float
    groups: int
    change_fraction: float
    mean_score: float
    score_delta: float
    distinct_scores: int
    spread: float = 0.0
    acceptable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InfluenceReport:
    """One influence stage: the groups it probed, the budget it spent, and its iteration's scale
    (θ*'s F, the step size and calibration are shared by every influence stage of the iteration)."""

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
        return distinct_values([g.influence for g in self.groups])

    @property
    def tie_fraction(self) -> float:
        return tie_fraction([g.influence for g in self.groups])

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


def distinct_values(values: Sequence[float]) -> int:
    return len({round(v, TIE_DECIMALS) for v in values})


def tie_fraction(values: Sequence[float]) -> float:
    """Fraction of values equal to another value (0 for none or one value)."""
    counts = Counter(round(v, TIE_DECIMALS) for v in values)
    return sum(c for c in counts.values() if c > 1) / len(values) if values else 0.0


def spread(values: Sequence[float]) -> float:
    """Population standard deviation (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def pair_influence(groups: Sequence[GroupInfluence]) -> dict[str, float]:
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
