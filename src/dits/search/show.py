"""A readable text rendering of a search tree (for ``dits tree show``)."""

from __future__ import annotations

from dits.search.tree import ROOT, Tree


def _snippet(text: str, max_chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max(max_chars - 1, 0)] + "…"


def format_tree(tree: Tree, max_chars: int = 60) -> str:
    """One line per node, indented by depth: id, speaker, visits, Q, influence (if probed), utterance start.

    Nodes selected for expansion are marked with ``*``.
    """
    selected = set(tree.selected)
    lines = [
        f"tree {tree.id}: {tree.expansions} expansions, {len(tree.nodes)} nodes, "
        f"selected {', '.join(map(str, tree.selected)) or '-'}"
    ]
    stack = [(ROOT, 0)]
    while stack:
        node_id, depth = stack.pop()
        node = tree.nodes[node_id]
        mark = "*" if node_id in selected else " "
        who = node.turn.speaker if node.turn else "root"
        stats = f"n={node.visits} Q={node.value:.3f}"
        if node.influence is not None:
            stats += f" I={node.influence:+.3f}"
        text = f'  "{_snippet(node.text, max_chars)}"' if node.turn else ""
        lines.append(f"{'  ' * depth}{mark}#{node_id} {who} {stats}{text}")
        stack.extend((child, depth + 1) for child in reversed(node.children))
    return "\n".join(lines)
