"""Optima's reward: task score − λ_tok · tokens / T_norm + λ_loss / max utterance NLL, with penalties.

* token term = −λ_tok · tokens / T_norm; forced to −1 when the dialogue has ≤ ``min_tokens`` tokens or an
  utterance hit the per-utterance cap (``overlong``).
* readability term = λ_loss / max_k NLL(u_k), the NLL being the mean token NLL of each utterance under the
  frozen initial model; forced to −1 when the dialogue is empty or longer than ``max_tokens``, and to 0
  when an utterance repeats an earlier one (no fluency bonus for loops).
* task score forced to 0 when an utterance impersonates the partner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dits.config import RewardConfig
from dits.engines.batching import NllCall, Program
from dits.mas.dialogue import Dialogue, impersonates


@dataclass(frozen=True)
class RewardBreakdown:
    """Every term of one dialogue's reward, kept for analysis."""

    task: float
    token_term: float
    loss_term: float
    total: float
    tokens: int
    max_nll: float
    impersonation: bool
    repetition: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def has_repetition(dialogue: Dialogue) -> bool:
    """True if some utterance repeats an earlier one (after whitespace and case normalisation)."""
    seen: set[str] = set()
    for turn in dialogue.turns:
        key = _normalised(turn.text)
        if key in seen:
            return True
        seen.add(key)
    return False


def compute_reward(
    dialogue: Dialogue,
    task_score: float,
    nlls: Sequence[float],
    token_norm: float,
    weights: RewardConfig,
) -> RewardBreakdown:
    """The reward of a finished dialogue given its task score and per-utterance NLLs."""
    tokens = dialogue.tokens
    impersonation = any(impersonates(t) for t in dialogue.turns)
    task = 0.0 if impersonation else task_score

    if tokens <= weights.min_tokens or any(t.overlong for t in dialogue.turns):
        token_term = -1.0
    else:
        token_term = -weights.lambda_tokens * tokens / max(token_norm, 1.0)

    repetition = has_repetition(dialogue)
    max_nll = max(nlls) if nlls else 0.0
    if not dialogue.turns or tokens > weights.max_tokens:
        loss_term = -1.0
    elif repetition:
        loss_term = 0.0
    else:
        loss_term = weights.lambda_loss / max(max_nll, 1e-6)

    total = task + token_term + loss_term
    return RewardBreakdown(task, token_term, loss_term, total, tokens, max_nll, impersonation, repetition)


def reward_program(
    dialogue: Dialogue, task_score: float, token_norm: float, weights: RewardConfig
) -> Program[RewardBreakdown]:
    """A program that asks the engine for the utterance NLLs, then computes the reward."""
    nlls: list[float] = (yield NllCall([t.text for t in dialogue.turns])) if dialogue.turns else []
    return compute_reward(dialogue, task_score, nlls, token_norm, weights)
