"""Every term and penalty of the reward."""

from __future__ import annotations

import pytest

from dits.engines.batching import run_one
from dits.engines.fake import FakeEngine
from dits.mas.dialogue import Dialogue, Turn
from dits.reward import RewardConfig, compute_reward, has_repetition, reward_program

W = RewardConfig(lambda_tokens=0.5, lambda_loss=1.0, min_tokens=3, max_tokens=100)


def dialogue(*texts: str, overlong: bool = False) -> Dialogue:
    turns = [
        Turn("alice" if i % 2 == 0 else "bob", t, len(t.split()), None, overlong) for i, t in enumerate(texts)
    ]
    return Dialogue("x", turns)


def test_all_terms_add_up() -> None:
    d = dialogue("one two three", "four five six")  # 6 tokens
    r = compute_reward(d, task_score=0.8, nlls=[2.0, 4.0], token_norm=12, weights=W)
    assert r.task == 0.8
    assert r.token_term == pytest.approx(-0.5 * 6 / 12)
    assert r.loss_term == pytest.approx(1.0 / 4.0)  # the least natural utterance counts
    assert r.total == pytest.approx(0.8 - 0.25 + 0.25)


def test_short_or_overlong_dialogues_get_token_term_minus_one() -> None:
    assert compute_reward(dialogue("a b"), 1.0, [1.0], 10, W).token_term == -1.0
    assert compute_reward(dialogue("a b c d", overlong=True), 1.0, [1.0], 10, W).token_term == -1.0


def test_loss_term_penalties() -> None:
    assert compute_reward(dialogue(), 0.0, [], 10, W).loss_term == -1.0
    long = dialogue(" ".join(["w"] * 101))
    assert compute_reward(long, 0.0, [1.0], 200, W).loss_term == -1.0
    repeated = dialogue("same words here", "other words", "Same  words here")
    assert has_repetition(repeated)
    assert compute_reward(repeated, 1.0, [1.0, 1.0, 1.0], 10, W).loss_term == 0.0


def test_impersonation_zeroes_task_score() -> None:
    r = compute_reward(dialogue("paris is it. Bob: yes paris"), 1.0, [1.0], 10, W)
    assert r.impersonation and r.task == 0.0


def test_reward_program_asks_engine_for_nlls() -> None:
    engine = FakeEngine(nll_fn=lambda text: float(len(text)))
    d = dialogue("aa bb cc", "dddd")
    r = run_one(reward_program(d, 1.0, 10, W), engine)
    assert engine.nll_calls == [["aa bb cc", "dddd"]]
    assert r.max_nll == 8.0
