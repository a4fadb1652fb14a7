"""Training rows for TRL: SFT rows from dialogues, DPO rows from preference pairs, length fitting.

Pure Python: tokenizers are passed in (anything with ``apply_chat_template`` and ``decode``).

**SFT rows: one row per agent view, pre-tokenised, with a loss mask on the agent's own turns.**
`sft_rows` gives each agent's whole view of a kept dialogue (`agent_view`, base prompts, never the
iteration-0 format hint); `tokenize_sft` turns it into ``input_ids`` plus a ``completion_mask`` that is 1
exactly on the agent's own turns: each turn's text and its end-of-turn token; not the context (system
prompt, demonstration, opening), not the partner's turns, not role headers, not the template's
whitespace after the end-of-turn token (the model never generates it). Why this form:

* one forward pass trains every own turn of a view; prompt/completion rows (one per turn) would
  re-encode the growing history once per turn — quadratic in the number of turns — for the same loss;
* it is Optima's speaker-aware mask, but found from message boundaries (token lengths of the rendered
  message prefixes) instead of hard-coded token ids, so it works with any chat template whose rendered
  prefix is a token prefix of the whole conversation;
* TRL 1.16 ``SFTTrainer`` accepts pre-tokenised rows (an ``input_ids`` column) and folds
  ``completion_mask`` into the labels, but only with ``completion_only_loss=True`` set explicitly: its
  default (``None``) means "prompt/completion rows only" and would silently train on every token.
  ``assistant_only_loss`` needs ``{% generation %}`` template markers that SmolLM2's template lacks.

Long views are cut at the end (keep the start), so each trained turn keeps the exact context it was
spoken in; a view whose first own token lies beyond ``max_length`` is dropped and counted.

**DPO rows** are TRL conversational preference rows. TRL silently drops rows whose prompt alone fills
``max_length``, so `fit_dpo_rows` first removes the oldest conversation turns of long
prompts (`fit_to_length`; the context messages stay) and drops, with a count, only rows that cannot
fit at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dits.engines.base import Message
from dits.mas.dialogue import Dialogue
from dits.mas.render import agent_view
from dits.mas.turn import SPEAKERS
from dits.search.pairs import PreferencePair
from dits.tasks.base import TaskInstance


class ChatTokenizer(Protocol):
    """The tokenizer surface used here (a transformers tokenizer satisfies it)."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def decode(self, token_ids: Any, **kwargs: Any) -> str: ...


def chat_ids(
    tokenizer: ChatTokenizer, messages: Sequence[Message], *, generation_prompt: bool = False
) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template."""
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------- SFT
def sft_rows(dialogue: Dialogue, instance: TaskInstance, *, demonstrate: bool = True) -> list[dict[str, Any]]:
    """One row per agent that spoke: its view up to its last turn, under the base prompts.

    ``demonstrate`` must match the sampling setting (``dialogue.demonstration``) so the model trains on
    the view it generates from; ``context_messages`` counts the leading messages before the real
    conversation (system, demonstration, opening), which are never trained.
    """
    rows = []
    for speaker in SPEAKERS:
        own = [i for i, turn in enumerate(dialogue.turns) if turn.speaker == speaker]
        if not own:
            continue
        rows.append(
            {
                "messages": agent_view(
                    instance, speaker, dialogue.turns[: own[-1] + 1], demonstrate=demonstrate
                ),
                "context_messages": len(agent_view(instance, speaker, [], demonstrate=demonstrate)),
                "instance_id": dialogue.instance_id,
                "speaker": speaker,
            }
        )
    return rows


def own_turn_mask(
    tokenizer: ChatTokenizer, messages: Sequence[Message], first: int = 0
) -> tuple[list[int], list[int]]:
    """``(input_ids, mask)`` of a view; mask is 1 on the text + end-of-turn token of every assistant
    message from index ``first`` on (earlier ones, e.g. a demonstration, are context)."""
    ids = chat_ids(tokenizer, messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if i < first or message["role"] != "assistant":
            continue
        start = _common_prefix(chat_ids(tokenizer, messages[:i], generation_prompt=True), ids)
        end = _common_prefix(chat_ids(tokenizer, messages[: i + 1]), ids)
        while end > start and not tokenizer.decode([ids[end - 1]]).strip():
            end -= 1  # template whitespace after the end-of-turn token is never generated
        mask[start:end] = [1] * (end - start)
    return ids, mask


def tokenize_sft(
    row: dict[str, Any], tokenizer: ChatTokenizer, max_length: int
) -> dict[str, list[int]] | None:
    """A pre-tokenised SFTTrainer row (``input_ids``, ``completion_mask``), cut to ``max_length``;
    None if no own token fits."""
    ids, mask = own_turn_mask(tokenizer, row["messages"], row["context_messages"])
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    return {"input_ids": ids, "completion_mask": mask}


def tokenize_sft_rows(
    rows: Sequence[dict[str, Any]], tokenizer: ChatTokenizer, max_length: int
) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenised rows and the number of rows dropped because nothing trainable fits."""
    out = [tokenize_sft(row, tokenizer, max_length) for row in rows]
    kept = [row for row in out if row is not None]
    return kept, len(out) - len(kept)


# ---------------------------------------------------------------------------------------------- DPO
def dpo_rows(pairs: Sequence[PreferencePair]) -> list[dict[str, Any]]:
    """TRL conversational preference rows (the speaker's view, one assistant message each side), plus
    ``context_messages`` for `fit_dpo_rows` (the whole prompt when the pair does not record it)."""
    rows = []
    for pair in pairs:
        context = pair.meta.get("context_messages", len(pair.prompt))
        rows.append(
            {
                "prompt": [dict(m) for m in pair.prompt],
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
                "context_messages": context,
            }
        )
    return rows


def fit_to_length(
    prompt: Sequence[Message],
    completions: Sequence[Sequence[Message]],
    tokenizer: ChatTokenizer,
    max_length: int,
    *,
    keep: int,
) -> list[Message]:
    """``prompt`` without its oldest conversation turns, until prompt + longest completion fits ``max_length``.

    The first ``keep`` messages (system, demonstration, opening) always stay; turns go in (own, partner)
    pairs so roles keep alternating and the prompt still ends on the partner's message. If even the
    shortest prompt is too long, that shortest prompt is returned.
    """
    messages = list(prompt)

    def too_long() -> bool:
        return any(len(chat_ids(tokenizer, messages + list(c))) > max_length for c in completions)

    while len(messages) > keep and too_long():
        del messages[keep : keep + 2]
    return messages


def fit_dpo_rows(
    rows: Sequence[dict[str, Any]], tokenizer: ChatTokenizer, max_length: int
) -> tuple[list[dict[str, Any]], int]:
    """TRL rows (prompt, chosen, rejected) with prompts fitted to ``max_length``, and the number dropped
    because even the shortest prompt fills ``max_length`` (TRL would drop those silently)."""
    kept = []
    for row in rows:
        keep = row.get("context_messages", len(row["prompt"]))
        prompt = fit_to_length(
            row["prompt"], [row["chosen"], row["rejected"]], tokenizer, max_length, keep=keep
        )
        if len(chat_ids(tokenizer, prompt, generation_prompt=True)) < max_length:
            kept.append({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]})
    return kept, len(rows) - len(kept)
