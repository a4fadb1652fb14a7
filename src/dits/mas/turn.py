"""One utterance of a dialogue (`Turn`) and the speaking order: Alice first, then alternating."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dits.engines.base import Draft

SPEAKERS = ("alice", "bob")


@dataclass(frozen=True)
class Turn:
    """One utterance. ``answer`` is the answer extracted from it (None if it states none).

    ``token_ids``: the generated tokens, when the engine reports them — kept in memory only (not in
    artefacts), so that a probe can replay this turn as a draft (`dits.engines.base.Draft`).
    """

    speaker: str
    text: str
    tokens: int
    answer: str | None = None
    overlong: bool = False
    token_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["token_ids"]
        return data

    @property
    def draft(self) -> Draft | None:
        """This turn as a draft for the same view under other weights (None without token ids)."""
        return Draft(self.token_ids, not self.overlong) if self.token_ids else None


def next_speaker(turns: Sequence[Turn]) -> str:
    """Who speaks after ``turns``."""
    return SPEAKERS[len(turns) % 2]
