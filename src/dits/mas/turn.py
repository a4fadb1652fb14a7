"""One utterance of a dialogue (`Turn`) and the speaking order: Alice first, then alternating."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SPEAKERS = ("alice", "bob")


@dataclass(frozen=True)
class Turn:
    """One utterance. ``answer`` is the answer extracted from it (None if it states none)."""

    speaker: str
    text: str
    tokens: int
    answer: str | None = None
    overlong: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_speaker(turns: Sequence[Turn]) -> str:
    """Who speaks after ``turns``."""
    return SPEAKERS[len(turns) % 2]
