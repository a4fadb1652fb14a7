"""Preference-pair extraction: branch points, floor, gap, top fraction per tree, prompts."""

from __future__ import annotations

from dits.config import PairConfig
from dits.mas.render import agent_view
from dits.search.pairs import PreferencePair, extract_pairs
from dits.search.tree import ROOT, Tree
from test_search_support import build_tree


def hand_tree() -> Tree:
    """Branch points: root (0.9 vs 0.3: kept), 1 (0.8 vs 0.5: kept), 2 (0.35: below the floor),
    3 (0.7 vs 0.55: gap too small), 4 (0.95 vs 0.2: kept)."""
    return build_tree(
        [
            (
                "A1",
                0.9,
                [
                    ("B3", 0.8, [("A8", 0.7, []), ("A9", 0.55, [])]),
                    ("B4", 0.5, [("A10", 0.95, []), ("A11", 0.5, []), ("A12", 0.2, [])]),
                ],
            ),
            ("A2", 0.3, [("B5", 0.35, []), ("B6", 0.1, [])]),
            ("A7", 0.6, []),
        ]
    )


def node_by_text(tree: Tree, text: str) -> int:
    return next(n.id for n in tree.nodes if n.text == text)


def test_floor_gap_and_top_half() -> None:
    tree = hand_tree()
    every = extract_pairs(tree, PairConfig(min_chosen_value=-10, min_gap=-10, top_fraction_per_tree=1.0))
    assert len(every) == 5  # every node with ≥ 2 children
    kept = extract_pairs(tree, PairConfig(min_chosen_value=0.4, min_gap=0.2, top_fraction_per_tree=1.0))
    b4 = node_by_text(tree, "B4")
    assert [(p.node_id, p.chosen, p.rejected) for p in kept] == [
        (b4, "A10", "A12"),
        (ROOT, "A1", "A2"),
        (node_by_text(tree, "A1"), "B3", "B4"),
    ]
    assert [p.chosen_value for p in kept] == [0.95, 0.9, 0.8]
    assert [p.rejected_value for p in kept] == [0.2, 0.3, 0.5]
    top = extract_pairs(tree, PairConfig(min_chosen_value=0.4, min_gap=0.2, top_fraction_per_tree=0.5))
    assert [p.node_id for p in top] == [b4]  # ⌊0.5 · 3⌋ = 1, the best chosen Q


def test_a_single_pair_is_kept_and_none_gives_none() -> None:
    tree = build_tree([("good", 0.9, []), ("bad", 0.1, [])])
    assert [p.chosen for p in extract_pairs(tree, PairConfig())] == ["good"]
    assert extract_pairs(build_tree([("only", 0.9, [])]), PairConfig()) == []
    assert extract_pairs(build_tree([("x", 0.3, []), ("y", 0.0, [])]), PairConfig()) == []


def test_best_and_worst_are_recomputed_from_current_values() -> None:
    tree = build_tree([("first", 0.9, []), ("second", 0.1, []), ("third", 0.5, [])])
    (pair,) = extract_pairs(tree, PairConfig())
    assert (pair.chosen, pair.rejected) == ("first", "second")
    tree.nodes[1].value, tree.nodes[3].value = 0.0, 1.0
    (pair,) = extract_pairs(tree, PairConfig())
    assert (pair.chosen, pair.rejected, pair.meta["chosen_node"], pair.meta["rejected_node"]) == (
        "third",
        "first",
        3,
        1,
    )


def test_equal_values_never_pair_a_node_with_itself() -> None:
    tree = build_tree([("same", 0.5, []), ("also", 0.5, [])])
    (pair,) = extract_pairs(tree, PairConfig(min_chosen_value=0.0, min_gap=-1.0))
    assert (pair.chosen, pair.rejected) == ("same", "also")


def test_pair_fields_prompt_and_json() -> None:
    tree = hand_tree()
    a1 = node_by_text(tree, "A1")
    pair = next(p for p in extract_pairs(tree, PairConfig(top_fraction_per_tree=1.0)) if p.node_id == a1)
    assert pair.id == f"q1/{a1}" and pair.tree_id == pair.instance_id == "q1"
    assert pair.speaker == "bob"  # Alice spoke at depth 1, Bob answers
    assert pair.prompt == agent_view(tree.instance, "bob", tree.path_turns(a1))
    assert pair.prompt[-1]["content"].endswith("Alice: A1")
    assert pair.meta["depth"] == 1
    assert PreferencePair.from_dict(pair.to_dict()) == pair
