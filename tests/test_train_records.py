"""Training rows: per-agent SFT views with own-turn loss masks, DPO rows, length fitting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from dits.mas.dialogue import Dialogue, Turn
from dits.mas.prompts import FORMAT_POOL, system_prompt
from dits.mas.render import agent_view
from dits.models import resolve_model
from dits.search.pairs import PreferencePair
from dits.train.records import (
    chat_ids,
    dpo_rows,
    fit_dpo_rows,
    fit_to_length,
    own_turn_mask,
    sft_rows,
    tokenize_sft,
    tokenize_sft_rows,
)
from train_support import INSTANCE, TURNS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("tiny-random").base)


def test_records_module_does_not_import_torch():
    code = "import sys, dits.train.records; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def masked_spans(ids: list[int], mask: list[int], tokenizer) -> list[str]:
    spans, current = [], []
    for token, bit in zip(ids, mask, strict=True):
        if bit:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_sft_rows_are_base_prompt_views_ending_on_own_turns():
    dialogue = Dialogue("q1", TURNS, "Ann Lee, 1950", "agreement", {"format": FORMAT_POOL[0].name})
    rows = sft_rows(dialogue, INSTANCE)
    assert [r["speaker"] for r in rows] == ["alice", "bob"]
    alice, bob = rows
    assert alice["messages"] == agent_view(INSTANCE, "alice", TURNS)
    assert bob["messages"] == agent_view(INSTANCE, "bob", TURNS[:2])  # nothing after Bob's last turn
    for row in rows:
        assert row["messages"][0]["content"] == system_prompt("qa", row["speaker"], "tag")
        assert "Format:" not in row["messages"][0]["content"]
        assert row["messages"][-1]["role"] == "assistant"
        assert row["context_messages"] == len(agent_view(INSTANCE, row["speaker"], []))
    plain = sft_rows(dialogue, INSTANCE, demonstrate=False)[0]
    assert plain["messages"] == agent_view(INSTANCE, "alice", TURNS, demonstrate=False)
    assert plain["context_messages"] == 2
    assert [r["speaker"] for r in sft_rows(Dialogue("q1", TURNS[:1]), INSTANCE)] == ["alice"]


@pytest.mark.parametrize("demonstrate", [True, False])
def test_loss_mask_covers_exactly_own_turns_and_end_of_turn(tokenizer, demonstrate):
    for row in sft_rows(Dialogue("q1", TURNS), INSTANCE, demonstrate=demonstrate):
        ids, mask = own_turn_mask(tokenizer, row["messages"], row["context_messages"])
        assert ids == chat_ids(tokenizer, row["messages"])
        own = [t.text for t in TURNS if t.speaker == row["speaker"]]
        assert masked_spans(ids, mask, tokenizer) == [text + tokenizer.eos_token for text in own]
        assert tokenize_sft(row, tokenizer, 10_000) == {"input_ids": ids, "completion_mask": mask}


def test_tokenize_sft_keeps_the_start_and_drops_rows_without_own_tokens(tokenizer):
    row = sft_rows(Dialogue("q1", TURNS), INSTANCE)[0]
    full = tokenize_sft(row, tokenizer, 10_000)
    first_own = full["completion_mask"].index(1)
    cut = tokenize_sft(row, tokenizer, first_own + 3)
    assert cut == {k: v[: first_own + 3] for k, v in full.items()}
    assert tokenize_sft(row, tokenizer, first_own) is None
    kept, dropped = tokenize_sft_rows([row, row], tokenizer, first_own)
    assert (kept, dropped) == ([], 2)


def pair(
    speaker: str, turns: list[Turn], chosen="<A>Ann Lee, 1950</A>", rejected="I do not know."
) -> PreferencePair:
    prompt = agent_view(INSTANCE, speaker, turns)
    return PreferencePair(
        "p",
        "t",
        3,
        "q1",
        speaker,
        prompt,
        chosen,
        rejected,
        0.9,
        0.1,
        {"depth": len(turns), "context_messages": len(agent_view(INSTANCE, speaker, []))},
    )


def test_dpo_rows_are_conversational_preference_rows():
    (row,) = dpo_rows([pair("alice", TURNS[:2])])
    assert row == {
        "prompt": agent_view(INSTANCE, "alice", TURNS[:2]),
        "chosen": [{"role": "assistant", "content": "<A>Ann Lee, 1950</A>"}],
        "rejected": [{"role": "assistant", "content": "I do not know."}],
        "context_messages": len(agent_view(INSTANCE, "alice", [])),
    }


def long_turns(n: int) -> list[Turn]:
    return [Turn(("alice", "bob")[i % 2], f"turn {i}: " + "blah " * 30, 40) for i in range(n)]


@pytest.mark.parametrize("speaker", ["alice", "bob"])
def test_context_messages_follow_the_renderer(speaker):
    for depth in range(6):
        (row,) = dpo_rows([pair(speaker, long_turns(depth))])
        assert row["context_messages"] == len(agent_view(INSTANCE, speaker, []))
        assert row["prompt"][: row["context_messages"] - 1] == agent_view(INSTANCE, speaker, [])[:-1]


def test_fit_to_length_drops_oldest_conversation_turns_in_pairs(tokenizer):
    prompt = agent_view(INSTANCE, "alice", long_turns(6))  # context, then 3 (own, partner) pairs
    keep = len(agent_view(INSTANCE, "alice", []))
    completions = [
        [{"role": "assistant", "content": "short"}],
        [{"role": "assistant", "content": "a bit longer"}],
    ]
    full = max(len(chat_ids(tokenizer, prompt + c)) for c in completions)
    assert fit_to_length(prompt, completions, tokenizer, full, keep=keep) == prompt
    fitted = fit_to_length(prompt, completions, tokenizer, full - 1, keep=keep)
    assert fitted == prompt[:keep] + prompt[keep + 2 :]  # the oldest (own, partner) pair is gone
    assert max(len(chat_ids(tokenizer, fitted + c)) for c in completions) <= full - 1
    assert [m["role"] for m in fitted[keep:]] == ["assistant", "user", "assistant", "user"]
    assert fit_to_length(prompt, completions, tokenizer, 20, keep=keep) == prompt[:keep]


def test_fit_dpo_rows_fits_long_prompts_and_drops_only_unfittable(tokenizer):
    rows = dpo_rows([pair("alice", long_turns(6)), pair("bob", long_turns(5)), pair("alice", [])])
    shortest = [agent_view(INSTANCE, "alice", []), agent_view(INSTANCE, "bob", long_turns(1))]
    alice_len, bob_len = (len(chat_ids(tokenizer, p, generation_prompt=True)) for p in shortest)
    assert alice_len < bob_len
    kept, dropped = fit_dpo_rows(rows, tokenizer, bob_len + 30)
    assert dropped == 0 and [r["prompt"] for r in kept] == [shortest[0], shortest[1], shortest[0]]
    assert kept[1]["chosen"] == rows[1]["chosen"] and kept[1]["rejected"] == rows[1]["rejected"]
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in kept)
    kept, dropped = fit_dpo_rows(rows, tokenizer, bob_len)  # Bob's opening alone fills max_length
    assert dropped == 1 and [r["prompt"] for r in kept] == [shortest[0], shortest[0]]
    assert fit_dpo_rows(rows, tokenizer, alice_len) == ([], 3)
