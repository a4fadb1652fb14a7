"""Which node to expand next: pluggable node priorities and Optima's selection rule (not UCT).

Selection (`select_node`):
1. candidates = the root ∪ nodes whose *first* child has children (no expansion at the end of
   conversations), minus every node already selected (no node is expanded twice);
2. drop candidates whose normalised edit distance ``ED(a, b) / (max(len a, len b) + 1)`` to an already
   selected node is below ``dedup_threshold``. The root has no text: its distance is 0 to itself and 1
   to any other node, so it only ever blocks itself;
3. keep the ``top_k`` by priority (ties: lower node id first) and sample one with a softmax over the
   priorities (temperature 1, raw reward scale). No candidate left → the root (the only node that can
   be expanded more than once).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import fmean
from typing import Protocol

from dits.config import SearchConfig
from dits.search.tree import ROOT, Node, Tree, edit_distance
from dits.utils import minmax


class NodePolicy(Protocol):
    """Scores candidate nodes; higher is expanded more often."""

    def priority(self, tree: Tree, node: Node) -> float: ...


@dataclass(frozen=True)
class QPolicy:
    """Optima: priority = Q."""

    def priority(self, tree: Tree, node: Node) -> float:
        return node.value


@dataclass(frozen=True)
class InfluencePolicy:
    """DITS search guidance: priority = Q + γ·Î.

    Î is the mean normalised influence of the probed pairs whose branch point lies at or below the node.
    Influences are min–max normalised with ``bounds`` (the lowest and highest influence of all probes of
    the round, so every tree uses one scale, as the selection stage does) or, without bounds, over this
    tree's probed nodes; equal bounds give 0.5. A node with no probed pair in its subtree gets the
    prior: the mean Î of the tree's probed nodes, or 0.5 when none is probed.
    """

    gamma: float = 1.0
    bounds: tuple[float, float] | None = None

    def normalised(self, tree: Tree) -> dict[int, float]:
        """Î of every probed node of ``tree`` (`dits.utils.minmax` over ``bounds`` or the tree's own)."""
        raw = {n.id: n.influence for n in tree.nodes if n.influence is not None}
        return minmax(raw, self.bounds)

    def priority(self, tree: Tree, node: Node) -> float:
        scores = self.normalised(tree)
        below = [scores[i] for i in tree.subtree(node.id) if i in scores]
        prior = fmean(scores.values()) if scores else 0.5
        return node.value + self.gamma * (fmean(below) if below else prior)


def make_policy(cfg: SearchConfig, bounds: tuple[float, float] | None = None) -> NodePolicy:
    """The policy ``cfg.guidance`` names (``influence`` uses ``cfg.influence_weight`` as γ)."""
    if cfg.guidance == "influence":
        return InfluencePolicy(cfg.influence_weight, bounds)
    return QPolicy()


def node_distance(tree: Tree, a: int, b: int) -> float:
    """Normalised edit distance between two nodes' utterances (root: 0 to itself, 1 to others)."""
    if ROOT in (a, b):
        return 0.0 if a == b else 1.0
    text_a, text_b = tree.nodes[a].text, tree.nodes[b].text
    return edit_distance(text_a, text_b) / (max(len(text_a), len(text_b)) + 1)


def candidates(tree: Tree, dedup_threshold: float) -> list[int]:
    """Expandable nodes after the candidate rule, the never-twice rule and the diversity pruning."""
    selected = set(tree.selected)

    def expandable(node: Node) -> bool:
        return node.id == ROOT or (bool(node.children) and bool(tree.nodes[node.children[0]].children))

    return [
        node.id
        for node in tree.nodes
        if node.id not in selected
        and expandable(node)
        and all(node_distance(tree, node.id, s) >= dedup_threshold for s in selected)
    ]


def select_node(
    tree: Tree, policy: NodePolicy, rng: random.Random, *, top_k: int, dedup_threshold: float
) -> int:
    """Sample the node to expand (see the module docstring)."""
    scored = sorted(
        ((policy.priority(tree, tree.nodes[i]), i) for i in candidates(tree, dedup_threshold)),
        key=lambda item: (-item[0], item[1]),
    )[:top_k]
    if not scored:
        return ROOT
    best = scored[0][0]
    weights = [math.exp(p - best) for p, _ in scored]
    return rng.choices([i for _, i in scored], weights=weights)[0]
