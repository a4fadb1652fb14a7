"""The two-agent conversation: turns, the turn protocol and termination.

Alice always speaks first; speakers alternate. A dialogue ends when (Optima's rule) an utterance's
extracted answer equals the most recent previously extracted answer, or an utterance hits the
per-utterance token cap (``overlong``), or the total token cap, or the turn cap. The final answer is
always the last extracted answer, whatever the stop reason, in every stage (the reference code
scores a search rollout that hits the turn cap 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dits.config import DialogueConfig
from dits.engines.base import Completion, Draft, GenerationRequest, SamplingParams
from dits.engines.batching import GenerateCall, Program
from dits.mas.prompts import NAMES, PARTNER, FormatHint
from dits.mas.render import agent_view
from dits.mas.turn import Turn, next_speaker
from dits.tasks.base import Task, TaskInstance
from dits.utils import derive_seed

StopReason = Literal["agreement", "turn_cap", "token_cap", "overlong"]


@dataclass
class Dialogue:
    """A finished (or prefix of a) conversation about one task instance."""

    instance_id: str
    turns: list[Turn]
    final_answer: str | None = None
    stop_reason: StopReason | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "turns": [t.to_dict() for t in self.turns],
            "final_answer": self.final_answer,
            "stop_reason": self.stop_reason,
            "tokens": self.tokens,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Dialogue:
        return cls(
            instance_id=data["instance_id"],
            turns=[Turn(**t) for t in data["turns"]],
            final_answer=data.get("final_answer"),
            stop_reason=data.get("stop_reason"),
            meta=dict(data.get("meta", {})),
        )


def last_answer(turns: Sequence[Turn]) -> str | None:
    """The most recent extracted answer in ``turns``."""
    for turn in reversed(turns):
        if turn.answer:
            return turn.answer
    return None


def stop_reason(turns: Sequence[Turn], rules: DialogueConfig) -> StopReason | None:
    """Why the dialogue ``turns`` is finished, or None if it should go on."""
    if not turns:
        return None
    last = turns[-1]
    if last.answer and last.answer == last_answer(turns[:-1]):
        return "agreement"
    if last.overlong and rules.stop_on_overlong:
        return "overlong"
    if rules.max_total_tokens is not None and sum(t.tokens for t in turns) >= rules.max_total_tokens:
        return "token_cap"
    if len(turns) >= rules.max_turns:
        return "turn_cap"
    return None


def clean_utterance(text: str, speaker: str) -> str:
    """Strip whitespace and a leading own-name prefix ("Alice: ...") the model may add."""
    text = text.strip()
    prefix = f"{NAMES[speaker]}:"
    if text.startswith(prefix):
        text = text[len(prefix) :].lstrip()
    return text


class TwoAgentSystem:
    """Alice and Bob, one shared model, playing one task's protocol under the ``dialogue`` settings."""

    def __init__(self, task: Task, rules: DialogueConfig) -> None:
        self.task = task
        self.rules = rules

    def view(
        self, instance: TaskInstance, turns: Sequence[Turn], format_hint: FormatHint | None = None
    ) -> list[dict[str, str]]:
        """The messages the next speaker sees (the one renderer used by every stage)."""
        return agent_view(
            instance, next_speaker(turns), turns, format_hint, demonstrate=self.rules.demonstration
        )

    def make_turn(self, instance: TaskInstance, speaker: str, completion: Completion) -> Turn:
        """The turn ``speaker`` adds by saying ``completion`` (cleaned, its answer extracted)."""
        text = clean_utterance(completion.text, speaker)
        overlong = completion.finish_reason == "length"
        answer = self.task.extract(text, instance)
        return Turn(speaker, text, completion.num_tokens, answer, overlong, completion.token_ids)

    def converse(
        self,
        instance: TaskInstance,
        params: SamplingParams,
        *,
        seed: int,
        prefix: Sequence[Turn] = (),
        adapter: str | None = None,
        format_hint: FormatHint | None = None,
        reference: Dialogue | None = None,
    ) -> Program[Dialogue]:
        """A program (see `dits.engines.batching`) that plays the dialogue to its end from ``prefix``.

        Turn ``k`` is sampled with seed ``derive_seed(seed, k)``, so a dialogue depends only on its
        own seed, never on the batch it runs in. ``reference``: a dialogue of the same task, seeds and
        rules under other weights (θ*'s, for a probe); while this dialogue repeats it, each turn asks the
        engine with the reference's turn as a draft (same result, cheaper).
        """
        params = replace(params, n=1, max_new_tokens=self.rules.max_utterance_tokens)
        turns = list(prefix)
        reason = stop_reason(turns, self.rules)
        while reason is None:
            request = GenerationRequest(
                self.view(instance, turns, format_hint),
                adapter=adapter,
                seed=derive_seed(seed, len(turns)),
                draft=_draft(reference, turns),
            )
            (completion,) = yield GenerateCall(request, params)
            turns.append(self.make_turn(instance, next_speaker(turns), completion))
            reason = stop_reason(turns, self.rules)
        meta = {"format": format_hint.name} if format_hint else {}
        return Dialogue(instance.id, turns, last_answer(turns), reason, meta)

    def score(self, dialogue: Dialogue, instance: TaskInstance) -> float:
        """Task metric of the dialogue's final answer."""
        return self.task.score(dialogue.final_answer, instance)


def _draft(reference: Dialogue | None, turns: Sequence[Turn]) -> Draft | None:
    """The reference's next turn as a draft, while ``turns`` repeat the reference (None otherwise)."""
    if reference is None or len(turns) >= len(reference.turns):
        return None
    if any(a.text != b.text for a, b in zip(turns, reference.turns, strict=False)):
        return None
    return reference.turns[len(turns)].draft


def impersonates(turn: Turn) -> bool:
    """True if the utterance writes lines for the partner ("Bob: ..." inside Alice's turn) or itself twice."""
    partner = NAMES[PARTNER[turn.speaker]]
    own = NAMES[turn.speaker]
    return f"{partner}:" in turn.text or turn.text.count(f"{own}:") >= 1
