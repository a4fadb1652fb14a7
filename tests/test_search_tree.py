"""Tree structure: merging rollouts, running-mean backup, JSON round trip, text rendering."""

from __future__ import annotations

import json

import pytest

from dits.mas.dialogue import Turn
from dits.search.show import format_tree
from dits.search.tree import ROOT, Tree
from test_search_support import build_tree, make_instance


def turn(speaker: str, text: str) -> Turn:
    return Turn(speaker, text, len(text.split()))


def test_merge_follows_close_children_and_branches_on_new_text() -> None:
    tree = Tree(make_instance())
    leaf = tree.merge(ROOT, [turn("alice", "The capital is Paris."), turn("bob", "<A>paris</A>")], 0.1)
    assert [n.id for n in tree.nodes] == [0, 1, 2] and tree.path(leaf) == [0, 1, 2]

    # One character off on a 21-character utterance: 1/22 < 0.1 → follows node 1, then a new child.
    leaf = tree.merge(ROOT, [turn("alice", "The capital is Paris!"), turn("bob", "No idea at all.")], 0.1)
    assert tree.path(leaf) == [0, 1, 3]
    assert tree.nodes[1].text == "The capital is Paris."  # the first text is kept
    assert tree.nodes[1].children == [2, 3]

    # A different utterance opens a new branch at the root.
    leaf = tree.merge(ROOT, [turn("alice", "Something else entirely.")], 0.1)
    assert tree.nodes[ROOT].children == [1, 4] and leaf == 4


def test_merge_normalises_by_the_new_text_and_takes_the_closest_child() -> None:
    tree = Tree(make_instance())
    tree.add_child(ROOT, turn("alice", "abcdefghij"))
    # ED = 1, len(new) + 1 = 10 → 0.1, not < 0.1 (normalising by the longer text would merge: 1/11).
    assert tree.merge(ROOT, [turn("alice", "abcdefghi")], 0.1) == 2
    # "abcdefghiX" is 1 edit from node 1 and 1 from node 2 → tie → earliest child; "abcdefghj" → node 2.
    assert tree.merge(ROOT, [turn("alice", "abcdefghiX")], 0.2) == 1
    assert tree.merge(ROOT, [turn("alice", "abcdefgh")], 0.2) == 2


def test_backup_keeps_running_means_along_the_path() -> None:
    tree = Tree(make_instance())
    a = tree.merge(ROOT, [turn("alice", "first"), turn("bob", "second")], 0.1)
    b = tree.merge(ROOT, [turn("alice", "first"), turn("bob", "other reply")], 0.1)
    tree.backup(a, 1.0)
    tree.backup(b, 0.0)
    tree.backup(a, 0.5)
    root, first, second, other = tree.nodes
    assert (root.visits, first.visits, second.visits, other.visits) == (3, 3, 2, 1)
    assert root.value == pytest.approx(0.5) and first.value == pytest.approx(0.5)
    assert second.value == pytest.approx(0.75) and other.value == 0.0


def test_paths_and_subtrees() -> None:
    tree = build_tree([("a", 0.1, [("b", 0.2, [("c", 0.3, [])])]), ("d", 0.4, [])])
    assert [t.text for t in tree.path_turns(3)] == ["a", "b", "c"]
    assert [t.speaker for t in tree.path_turns(3)] == ["alice", "bob", "alice"]
    assert tree.path_turns(ROOT) == []
    assert sorted(tree.subtree(1)) == [1, 2, 3] and sorted(tree.subtree(ROOT)) == [0, 1, 2, 3, 4]


def test_json_round_trip_is_exact() -> None:
    tree = build_tree(
        [("Alice says <A>paris</A>", 0.1 + 0.2, [("ok\nnew line é", 1 / 3, [])]), ("x", -0.7, [])]
    )
    tree.nodes[1].influence = -0.0123456789
    tree.nodes[ROOT].visits, tree.nodes[ROOT].value = 3, 2 / 7
    tree.expansions, tree.selected = 2, [0, 0]
    line = tree.to_json()
    assert "\n" not in line
    again = Tree.from_json(line)
    assert again.to_dict() == tree.to_dict()
    assert again.to_json() == line
    assert again.instance == tree.instance and again.nodes == tree.nodes
    assert json.loads(line)["id"] == "q1"


def test_from_dict_rejects_misnumbered_nodes() -> None:
    data = build_tree([("a", 0.0, [])]).to_dict()
    data["nodes"][1]["id"] = 5
    with pytest.raises(ValueError, match="node ids"):
        Tree.from_dict(data)


def test_format_tree_shows_structure_stats_and_truncates() -> None:
    tree = build_tree([("a" * 100, 0.25, [("short", 0.5, [])]), ("second", 1.0, [])])
    tree.nodes[1].influence = 0.125
    tree.selected = [0, 1]
    lines = format_tree(tree, max_chars=10).splitlines()
    assert lines[0].startswith("tree q1:") and "selected 0, 1" in lines[0]
    assert lines[1].startswith("*#0 root n=0")
    assert lines[2] == '  *#1 alice n=1 Q=0.250 I=+0.125  "aaaaaaaaa…"'
    assert lines[3] == '     #2 bob n=1 Q=0.500  "short"'
    assert lines[4] == '   #3 alice n=1 Q=1.000  "second"'
