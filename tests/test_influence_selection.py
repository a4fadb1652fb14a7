"""Pair selection strategies on a hand-made pool; influence on tree nodes drives `InfluencePolicy`."""

from __future__ import annotations

import random

import pytest

from dits.config import SelectionConfig
from dits.errors import DitsError
from dits.influence.selection import assign_influence, influence_bounds, select_pairs
from dits.search.pairs import PreferencePair
from dits.search.policy import InfluencePolicy
from dits.utils import minmax
from test_search_support import build_tree

#           Q    raw I  → Î = minmax(I) → H = Q + Î (γ = 1)
POOL = [
    ("p0", 2.0, 0.0),  #   0.0          2.0
    ("p1", 0.9, 0.4),  #   0.2          1.1
    ("p2", 0.8, 1.0),  #   0.5          1.3
    ("p3", 0.7, 1.0),  #   0.5          1.2
    ("p4", 0.6, 1.6),  #   0.8          1.4
    ("p5", 0.5, 2.0),  #   1.0          1.5
]


def pair(pair_id: str, q: float, tree_id: str = "t", node_id: int = 0) -> PreferencePair:
    return PreferencePair(pair_id, tree_id, node_id, tree_id, "alice", [], "good", "bad", q, 0.0)


PAIRS = [pair(i, q) for i, q, _ in POOL]
INFLUENCE = {i: v for i, _, v in POOL}


def ids(selected: list[PreferencePair]) -> list[str]:
    return [p.id for p in selected]


def select(strategy: str, influence=INFLUENCE, seed: int = 0, **kwargs) -> list[str]:
    return ids(select_pairs(PAIRS, influence, SelectionConfig(strategy=strategy, **kwargs), seed=seed))


def test_each_strategy_picks_what_it_claims() -> None:
    # every strategy returns its pairs in pool order
    assert select("dits") == ["p0", "p4", "p5"]  # top ⌊0.5 · 6⌋ by H
    assert select("influence") == ["p2", "p4", "p5"]  # γ = 0; p2 and p3 tie on I, p2 has the higher Q
    assert select("q") == ["p0", "p1", "p2"]
    assert select("full") == [p.id for p in PAIRS]
    assert select("dits", alpha=0.34) == ["p0", "p5"]  # ⌊2.04⌋ = 2: H = 2.0 and 1.5
    assert select("dits", gamma=2.0, alpha=0.34) == ["p4", "p5"]  # H = Q + 2Î: 2.5, 2.2, 2.0, …
    assert select("dits", alpha=0.2) == ["p0"]  # ⌊1.2⌋ = 1
    assert select("q", alpha=0.01) == ["p0"]  # at least one pair


def test_random_selection_is_seeded_and_keeps_pool_order() -> None:
    picked = select("random", influence=None, seed=7)
    expected = [PAIRS[i].id for i in sorted(random.Random(7).sample(range(6), 3))]
    assert picked == expected and picked == select("random", influence=None, seed=7)
    assert len({tuple(select("random", influence=None, seed=s)) for s in range(10)}) > 1


def test_dits_with_constant_influence_reduces_to_q_selection() -> None:
    flat = dict.fromkeys(INFLUENCE, 0.3)
    assert select("dits", influence=flat) == select("q")
    assert minmax(flat) == dict.fromkeys(flat, 0.5)  # a zero-width range says nothing: the middle


def test_influence_strategies_need_a_score_for_every_pair() -> None:
    with pytest.raises(DitsError, match="needs influence"):
        select("dits", influence=None)
    with pytest.raises(DitsError, match="1 pairs have no influence"):
        select("influence", influence={k: v for k, v in INFLUENCE.items() if k != "p3"})
    assert select_pairs([], None, SelectionConfig(), seed=0) == []


def test_influence_on_nodes_changes_search_priorities() -> None:
    # root → A (1) → {A1 (2) → A1a (3), A2 (4)};  root → B (5) → {B1 (6) → B1a (7), B2 (8)}
    spec = [
        ("A", 0.5, [("A1", 0.5, [("A1a", 0.5, [])]), ("A2", 0.5, [])]),
        ("B", 0.5, [("B1", 0.5, [("B1a", 0.5, [])]), ("B2", 0.5, [])]),
    ]
    tree, other = build_tree(spec), build_tree(spec)
    pairs = [pair("a", 1.0, tree.id, 1), pair("b", 1.0, tree.id, 5), pair("x", 1.0, "elsewhere", 1)]
    influence = {"a": 0.9, "b": 0.1, "x": 5.0}
    bounds = influence_bounds(influence)
    policy = InfluencePolicy(gamma=1.0, bounds=bounds)
    node_a, node_b = tree.nodes[1], tree.nodes[5]
    assert policy.priority(tree, node_a) == policy.priority(tree, node_b)  # nothing probed yet
    assert assign_influence([tree], pairs, influence) == 2  # "x" belongs to a tree not given
    assert (node_a.influence, node_b.influence) == (0.9, 0.1)
    assert policy.priority(tree, node_a) > policy.priority(tree, node_b)
    assert policy.priority(tree, node_a) == pytest.approx(0.5 + 0.8 / 4.9)  # one scale over all trees
    assert all(n.influence is None for n in other.nodes)
    assert bounds == (0.1, 5.0) and influence_bounds([]) is None
