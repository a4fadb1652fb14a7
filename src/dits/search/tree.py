"""Search trees over dialogue turns: nodes, merging of rollouts, backup, JSON.

A tree belongs to one task instance (its id is the instance id). The root stands for the empty
dialogue and holds no turn; every other node holds one utterance, so a root-to-node path is a dialogue
prefix. ``value`` is Q, the running mean of the rewards of all rollouts that passed through the node.
``influence`` is the (raw) influence score of the preference pair whose branch point is the node, once
that pair has been probed (DITS); None otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Levenshtein

from dits.mas.turn import Turn
from dits.tasks.base import TaskInstance

ROOT = 0


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters."""
    return Levenshtein.distance(a, b)


@dataclass
class Node:
    """One utterance of the tree (the root holds none)."""

    id: int
    parent: int | None
    turn: Turn | None
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    influence: float | None = None

    @property
    def text(self) -> str:
        """The utterance ("" for the root)."""
        return self.turn.text if self.turn else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "turn": self.turn.to_dict() if self.turn else None,
            "children": list(self.children),
            "visits": self.visits,
            "value": self.value,
            "influence": self.influence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        turn = data["turn"]
        return cls(
            id=data["id"],
            parent=data["parent"],
            turn=Turn(**turn) if turn is not None else None,
            children=list(data["children"]),
            visits=data["visits"],
            value=data["value"],
            influence=data["influence"],
        )


@dataclass
class Tree:
    """The search tree of one instance. ``nodes[i].id == i`` (creation order); ``selected`` lists the
    node expanded at each expansion (the root may repeat: it is the fallback)."""

    instance: TaskInstance
    nodes: list[Node] = field(default_factory=lambda: [Node(ROOT, None, None)])
    expansions: int = 0
    selected: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.instance.id

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root down to ``node_id`` (both included)."""
        ids = [node_id]
        while (parent := self.nodes[ids[-1]].parent) is not None:
            ids.append(parent)
        return ids[::-1]

    def path_turns(self, node_id: int) -> list[Turn]:
        """The dialogue prefix that ends at ``node_id`` (empty for the root)."""
        return [turn for i in self.path(node_id) if (turn := self.nodes[i].turn) is not None]

    def subtree(self, node_id: int) -> Iterator[int]:
        """``node_id`` and all its descendants."""
        stack = [node_id]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(self.nodes[current].children)

    def add_child(self, parent_id: int, turn: Turn) -> int:
        node = Node(len(self.nodes), parent_id, turn)
        self.nodes.append(node)
        self.nodes[parent_id].children.append(node.id)
        return node.id

    def merge(self, start_id: int, turns: Sequence[Turn], threshold: float) -> int:
        """Walk ``turns`` down from ``start_id``; return the id of the node of the last turn.

        A turn follows the existing child whose text is closest to it when
        ``edit_distance(child, turn) / (len(turn) + 1) < threshold`` (earliest child on ties), else it
        becomes a new child.
        """
        current = start_id
        for turn in turns:
            scored = [
                (edit_distance(self.nodes[c].text, turn.text) / (len(turn.text) + 1), c)
                for c in self.nodes[current].children
            ]
            close = [item for item in scored if item[0] < threshold]
            current = min(close)[1] if close else self.add_child(current, turn)
        return current

    def backup(self, leaf_id: int, reward: float) -> None:
        """Add one rollout's reward to every node on the path: ``visits += 1``, Q = running mean."""
        for node_id in self.path(leaf_id):
            node = self.nodes[node_id]
            node.visits += 1
            node.value += (reward - node.value) / node.visits

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance": self.instance.to_dict(),
            "expansions": self.expansions,
            "selected": list(self.selected),
            "nodes": [node.to_dict() for node in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tree:
        nodes = [Node.from_dict(n) for n in data["nodes"]]
        if any(node.id != i for i, node in enumerate(nodes)):
            raise ValueError(f"tree {data.get('id')!r}: node ids must be 0..n-1 in order")
        return cls(
            TaskInstance.from_dict(data["instance"]), nodes, data["expansions"], list(data["selected"])
        )

    def to_json(self) -> str:
        """One JSON line (no newline inside)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Tree:
        return cls.from_dict(json.loads(line))
