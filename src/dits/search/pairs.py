"""Preference pairs from search trees: best vs worst child at each branching node, with prefilters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dits.engines.base import Message


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
