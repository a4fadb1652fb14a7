"""Node selection (Optima's rule) and node priorities (Q, Q + γ·influence)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from dits.config import SearchConfig
from dits.search.policy import (
    InfluencePolicy,
    QPolicy,
    candidates,
    make_policy,
    node_distance,
    select_node,
)
from dits.search.tree import ROOT, Tree
from test_search_support import build_tree


def chain(text: str, value: float) -> tuple[str, float, list]:
    """A node whose first child has a child (so it is a candidate)."""
    return (text, value, [(text + " / reply", value, [(text + " / end", value, [])])])


def three_candidates(values: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> Tree:
    """Root children 1, 4, 7: two near-duplicates and one different text."""
    return build_tree(
        [
            chain("The capital of France is Paris.", values[0]),
            chain("The capital of France is Paris!", values[1]),
            chain("Totally different message here, no overlap.", values[2]),
        ]
    )


def test_candidate_rule_uses_the_first_child() -> None:
    tree = build_tree(
        [
            ("one", 0.0, [("two", 0.0, [("three", 0.0, [])]), ("four", 0.0, [])]),
            ("five", 0.0, [("six", 0.0, []), ("seven", 0.0, [("eight", 0.0, [])])]),
        ]
    )
    # Node 1: its first child (2) has a child → candidate. Node 5: its first child (6) is a leaf, even
    # though its second child has one → not a candidate. Leaves and nodes above leaves are not either.
    assert candidates(tree, 0.25) == [ROOT, 1]


def test_dedup_drops_near_duplicates_of_selected_nodes_and_never_reselects() -> None:
    tree = three_candidates()
    assert candidates(tree, 0.25) == [ROOT, 1, 4, 7]
    tree.selected = [1]
    assert candidates(tree, 0.25) == [ROOT, 7]  # 4 is 1 edit away from 1: 1/32 < 0.25
    assert candidates(tree, 0.0) == [ROOT, 4, 7]  # no pruning, but 1 is never expanded twice
    tree.selected = [1, ROOT]
    assert candidates(tree, 0.25) == [7]


def test_root_distance_is_zero_to_itself_and_one_to_others() -> None:
    tree = three_candidates()
    assert node_distance(tree, ROOT, ROOT) == 0.0
    assert node_distance(tree, ROOT, 1) == node_distance(tree, 4, ROOT) == 1.0
    assert node_distance(tree, 1, 4) == pytest.approx(1 / 32)
    tree.selected = [ROOT]
    assert candidates(tree, 0.99) == [1, 4, 7]  # the root blocks nothing but itself


def test_top_k_and_softmax_sampling() -> None:
    tree = build_tree([chain("aaaa", 1.0), chain("bbbb", 0.9), chain("cccc", 0.2), chain("dddd", 0.1)])
    tree.selected = [ROOT]
    picks = {select_node(tree, QPolicy(), random.Random(s), top_k=1, dedup_threshold=0.25) for s in range(50)}
    assert picks == {1}
    picks = {
        select_node(tree, QPolicy(), random.Random(s), top_k=2, dedup_threshold=0.25) for s in range(200)
    }
    assert picks == {1, 4}

    tree = build_tree([chain("aaaa", math.log(3)), chain("bbbb", 0.0)])
    tree.selected = [ROOT]
    rng = random.Random(0)
    counts = Counter(select_node(tree, QPolicy(), rng, top_k=10, dedup_threshold=0.25) for _ in range(4000))
    assert 0.72 < counts[1] / 4000 < 0.78  # softmax: e^{ln 3} / (e^{ln 3} + 1) = 0.75


def test_root_is_the_fallback() -> None:
    tree = Tree(build_tree([]).instance)
    assert select_node(tree, QPolicy(), random.Random(0), top_k=10, dedup_threshold=0.25) == ROOT
    tree = three_candidates()
    tree.selected = [ROOT, 1, 7]  # 4 is pruned by 1
    assert select_node(tree, QPolicy(), random.Random(0), top_k=10, dedup_threshold=0.25) == ROOT


def probed_tree(low: float, high: float) -> Tree:
    """Candidates 1 and 4 with equal Q; pairs probed below them (at nodes 2 and 5); 7 unprobed."""
    tree = three_candidates()
    tree.nodes[2].influence, tree.nodes[5].influence = low, high
    tree.selected = [ROOT]
    return tree


def test_influence_priorities_change_with_probed_influence() -> None:
    tree = probed_tree(0.1, 0.9)
    policy = InfluencePolicy(gamma=1.0)
    assert policy.normalised(tree) == {2: 0.0, 5: 1.0}
    assert policy.priority(tree, tree.nodes[1]) == pytest.approx(0.5)
    assert policy.priority(tree, tree.nodes[4]) == pytest.approx(1.5)
    assert policy.priority(tree, tree.nodes[7]) == pytest.approx(1.0)  # prior: mean of probed Î
    assert policy.priority(tree, tree.nodes[ROOT]) == pytest.approx(0.5)  # everything lies below it

    def pick(t: Tree, p: object) -> int:
        return select_node(t, p, random.Random(0), top_k=1, dedup_threshold=0.0)  # type: ignore[arg-type]

    assert pick(tree, QPolicy()) == 1  # Q ties → lower id
    assert pick(tree, policy) == 4
    assert pick(probed_tree(0.9, 0.1), policy) == 1
    assert pick(tree, InfluencePolicy(gamma=0.0)) == 1


def test_influence_normalisation_bounds_and_prior() -> None:
    tree = probed_tree(0.1, 3.0)
    assert InfluencePolicy(bounds=(0.0, 2.0)).normalised(tree) == pytest.approx({2: 0.05, 5: 1.0})
    assert InfluencePolicy(bounds=(1.0, 1.0)).normalised(tree) == {2: 0.5, 5: 0.5}
    unprobed = three_candidates((0.2, 0.4, 0.6))
    policy = InfluencePolicy(gamma=2.0)
    assert [policy.priority(unprobed, unprobed.nodes[i]) for i in (1, 4, 7)] == pytest.approx([1.2, 1.4, 1.6])


def test_make_policy_follows_the_config() -> None:
    assert make_policy(SearchConfig()) == QPolicy()
    assert make_policy(
        SearchConfig(guidance="influence", influence_weight=0.3), (0.0, 1.0)
    ) == InfluencePolicy(0.3, (0.0, 1.0))
