"""Which preference pairs train the DPO stage, and influence on search-tree nodes (pure Python).

Strategies (`SelectionConfig.strategy`), over pairs that already passed Optima's prefilters; k =
⌊α·n⌋ (at least 1):

* ``dits``: H = Q + γ·Î, Î = min–max normalised influence over the given pairs (`dits.utils.minmax`),
  Q = the chosen answer's value; the top k by H, ties by Q, then pool order;
* ``influence``: γ = 0 — the top k by influence, ties by Q, then pool order;
* ``q``: the top k by Q (Optima's value selection), ties in pool order;
* ``random``: k pairs drawn with a seeded RNG, returned in pool order;
* ``full``: every pair, in pool order.

Every strategy returns its pairs in pool order, so two strategies that keep the same pairs train the
same DPO run (the trainer's seeded shuffle would otherwise see them in a different order).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

from dits.config import SelectionConfig
from dits.errors import DitsError
from dits.search.pairs import PreferencePair
from dits.search.tree import Tree
from dits.utils import minmax


def select_pairs(
    pairs: Sequence[PreferencePair],
    influence: Mapping[str, float] | None,
    cfg: SelectionConfig,
    *,
    seed: int,
) -> list[PreferencePair]:
    """The pairs ``cfg.strategy`` keeps (module docstring). ``influence`` maps pair id → influence of its
    group; ``dits`` and ``influence`` need it for every pair."""
    if cfg.strategy == "full" or not pairs:
        return list(pairs)
    k = max(1, math.floor(cfg.alpha * len(pairs) + 1e-9))  # 1e-9: 0.29 * 100 is 28.99…
    if cfg.strategy == "random":
        picked = sorted(random.Random(seed).sample(range(len(pairs)), k))
        return [pairs[i] for i in picked]
    if cfg.strategy == "q":
        return _top(pairs, k, lambda p: (-p.chosen_value,))
    if influence is None:
        raise DitsError(
            f"selection strategy {cfg.strategy!r} needs influence scores; run the influence stage"
        )
    missing = [p.id for p in pairs if p.id not in influence]
    if missing:
        raise DitsError(
            f"{len(missing)} pairs have no influence score (e.g. {missing[0]!r}); probe them or leave them out"
        )
    if cfg.strategy == "dits":
        scaled = minmax({p.id: influence[p.id] for p in pairs})
        key = {p.id: p.chosen_value + cfg.gamma * scaled[p.id] for p in pairs}
    else:
        key = {p.id: influence[p.id] for p in pairs}
    return _top(pairs, k, lambda p: (-key[p.id], -p.chosen_value))


def _top(
    pairs: Sequence[PreferencePair], k: int, rank: Callable[[PreferencePair], tuple[float, ...]]
) -> list[PreferencePair]:
    """The ``k`` pairs ranked first by ``rank`` (ascending; ties in pool order), in pool order."""
    best = set(sorted(range(len(pairs)), key=lambda i: rank(pairs[i]))[:k])
    return [p for i, p in enumerate(pairs) if i in best]


def assign_influence(
    trees: Iterable[Tree], pairs: Iterable[PreferencePair], influence: Mapping[str, float]
) -> int:
    """Write each probed pair's influence onto its branch node (``tree.nodes[pair.node_id].influence``),
    for influence-guided search; returns how many nodes were set. Pairs of trees not given are skipped."""
    by_id = {tree.id: tree for tree in trees}
    count = 0
    for pair in pairs:
        tree = by_id.get(pair.tree_id)
        if tree is not None and pair.id in influence:
            tree.nodes[pair.node_id].influence = influence[pair.id]
            count += 1
    return count


def influence_bounds(influence: Mapping[str, float] | Iterable[float]) -> tuple[float, float] | None:
    """``(lowest, highest)`` influence of a round, for `InfluencePolicy(bounds=...)` (None if empty), so
    every tree normalises on one scale."""
    values = list(influence.values() if isinstance(influence, Mapping) else influence)
    return (min(values), max(values)) if values else None
