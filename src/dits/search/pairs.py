"""Preference pairs from search trees: best vs worst child at each branching node, with prefilters."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dits.config import PairConfig
from dits.engines.base import Message
from dits.mas.render import agent_view
from dits.mas.turn import next_speaker
from dits.search.tree import Tree


@dataclass
class PreferencePair:
    """A DPO datum: at node ``node_id`` of tree ``tree_id`` the next speaker's view ``prompt`` and two
    utterances, the child with the highest Q (``chosen``) and the lowest Q (``rejected``)."""

    id: str
    tree_id: str
    node_id: int
    instance_id: str
    speaker: str
    prompt: list[Message]
    chosen: str
    rejected: str
    chosen_value: float
    rejected_value: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferencePair:
        return cls(**data)

    @property
    def key(self) -> str:
        """The pair's id and a digest of its content (prompt, chosen, rejected): a pair whose node's best
        or worst child changed since it was probed gets a new key, so its old influence is not reused."""
        content = json.dumps([self.prompt, self.chosen, self.rejected], ensure_ascii=False)
        return f"{self.id}#{hashlib.blake2b(content.encode(), digest_size=6).hexdigest()}"


def branch_pair(tree: Tree, node_id: int, *, demonstrate: bool = True) -> PreferencePair:
    """The pair at a node with ≥ 2 children: max-Q child vs min-Q child (recomputed now; ties: earlier
    child chosen, later child rejected, so the two always differ)."""
    children = sorted(tree.nodes[node_id].children, key=lambda c: (-tree.nodes[c].value, c))
    best, worst = tree.nodes[children[0]], tree.nodes[children[-1]]
    turns = tree.path_turns(node_id)
    speaker = next_speaker(turns)
    return PreferencePair(
        id=f"{tree.id}/{node_id}",
        tree_id=tree.id,
        node_id=node_id,
        instance_id=tree.instance.id,
        speaker=speaker,
        prompt=agent_view(tree.instance, speaker, turns, demonstrate=demonstrate),
        chosen=best.text,
        rejected=worst.text,
        chosen_value=best.value,
        rejected_value=worst.value,
        meta={
            "depth": len(turns),
            "context_messages": len(agent_view(tree.instance, speaker, [], demonstrate=demonstrate)),
            "chosen_node": best.id,
            "rejected_node": worst.id,
            "chosen_visits": best.visits,
            "rejected_visits": worst.visits,
        },
    )


def extract_pairs(tree: Tree, cfg: PairConfig, *, demonstrate: bool = True) -> list[PreferencePair]:
    """Optima's pairs of one tree: one per branch point, kept iff chosen Q > ``min_chosen_value`` and
    chosen Q − rejected Q > ``min_gap``; then the top ``⌊top_fraction_per_tree · n⌋`` by chosen Q (at
    least one), best first. ``demonstrate`` must match the dialogue setting the tree was grown with."""
    pairs = [branch_pair(tree, n.id, demonstrate=demonstrate) for n in tree.nodes if len(n.children) >= 2]
    kept = [
        p
        for p in pairs
        if p.chosen_value > cfg.min_chosen_value and p.chosen_value - p.rejected_value > cfg.min_gap
    ]
    kept.sort(key=lambda p: (-p.chosen_value, p.node_id))
    keep = max(1, math.floor(cfg.top_fraction_per_tree * len(kept) + 1e-9))  # 1e-9: 0.29 * 100 is 28.99…
    return kept[:keep]
