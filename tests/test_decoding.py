"""The HF engine's decoder: prefix reuse, continuous refill and drafts never change a completion."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dits.engines.base import BASE, AdapterWeights, Draft, GenerationRequest, SamplingParams
from dits.engines.kv_cache import PrefixTree

SYSTEM = "You are a careful assistant who answers every question in a few words and nothing else. " * 2
PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello to Bob.", "Count to three.", "Who wrote it?"]


def chat(text: str, *history: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    for index, said in enumerate(history):
        messages.append({"role": "assistant" if index % 2 == 0 else "user", "content": said})
    return messages


def engine(tiny_model: str, **kwargs: Any) -> Any:
    from dits.engines.hf import HFEngine

    built = HFEngine(tiny_model, **{"batch_size": 8, **kwargs})
    from peft import LoraConfig

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    built.add_adapter("one", AdapterWeights(config, {}))
    return built


def texts(out: list[list[Any]]) -> list[list[str]]:
    return [[c.text for c in cs] for cs in out]


def requests(turns: int = 1) -> list[GenerationRequest]:
    """Prompts under the base model and an adapter, some extending others (later turns of a chat)."""
    out = []
    for i, prompt in enumerate(PROMPTS):
        history = ["Blue, I think.", "Are you sure?"][: turns - 1]
        out.append(GenerationRequest(chat(prompt, *history), adapter=["one", BASE][i % 2], seed=i))
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_prefix_reuse_and_refill_do_not_change_completions(tiny_model: str, temperature: float) -> None:
    params = SamplingParams(temperature=temperature, max_new_tokens=10, n=2 if temperature else 1)
    plain = engine(tiny_model, kv_cache_mb=0, batch_size=16)
    reused = engine(tiny_model, kv_cache_mb=64, batch_size=3)  # fewer slots than rows: refill
    for turns in (1, 2, 3):  # each call extends the previous prompts: their prefixes are cached
        expected = texts(plain.generate(requests(turns), params))
        assert texts(reused.generate(requests(turns), params)) == expected
    assert reused.decoder.stats.cached_tokens > 0 and plain.decoder.stats.cached_tokens == 0
    assert reused.decoder.stats.computed_tokens < plain.decoder.stats.computed_tokens


def test_greedy_completions_equal_transformers_generate(tiny_model: str) -> None:
    from transformers import AutoModelForCausalLM

    hf = engine(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(hf.ref.base)
    for prompt in PROMPTS:
        inputs = hf.tokenizer.apply_chat_template(
            chat(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        expected = hf.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ((completion,),) = hf.generate(
            [GenerationRequest(chat(prompt), adapter=BASE)], SamplingParams(max_new_tokens=10)
        )
        assert completion.text == expected


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_drafts_give_the_completions_decoding_gives(tiny_model: str, temperature: float) -> None:
    params = SamplingParams(temperature=temperature, max_new_tokens=10)
    hf = engine(tiny_model)
    base = hf.generate(requests(), params)
    drafts = [
        cs[0].token_ids and Draft(cs[0].token_ids, cs[0].finish_reason == "stop") for cs in base
    ]  # the exact continuation
    wrong = [Draft(tuple(cs[0].token_ids[:2]) + (11, 12, 13), False) for cs in base]  # diverges at 2
    for hint in (drafts, wrong):
        hinted = [
            GenerationRequest(r.messages, adapter=r.adapter, seed=r.seed, draft=d or None)
            for r, d in zip(requests(), hint, strict=True)
        ]
        assert texts(hf.generate(hinted, params)) == texts(base)
    assert hf.decoder.stats.accepted_draft_tokens > 0


def test_near_ties_in_a_draft_are_decided_by_decoding(tiny_model: str) -> None:
    params = SamplingParams(max_new_tokens=10)
    hf = engine(tiny_model)
    base = hf.generate(requests(), params)
    hf.decoder.tie_margin = float("inf")  # every draft position counts as a near-tie
    hinted = [
        GenerationRequest(r.messages, adapter=r.adapter, seed=r.seed, draft=Draft(cs[0].token_ids, True))
        for r, cs in zip(requests(), base, strict=True)
    ]
    assert texts(hf.generate(hinted, params)) == texts(base)


def test_changed_adapter_weights_invalidate_their_cached_prefixes(tiny_model: str) -> None:
    hf = engine(tiny_model)
    params = SamplingParams(max_new_tokens=8)
    request = [GenerationRequest(chat(PROMPTS[0]), adapter="one")]
    hf.generate(request, params)
    with torch.no_grad():
        for name, param in hf.trainable_model().named_parameters():
            if ".one." in name:
                param.add_(0.5)
    hf.weights_changed("one")
    fresh = engine(tiny_model, kv_cache_mb=0)
    with torch.no_grad():
        for name, param in fresh.trainable_model().named_parameters():
            if ".one." in name:
                param.add_(0.5)
    assert texts(hf.generate(request, params)) == texts(fresh.generate(request, params))


def kv(n: int, value: float) -> torch.Tensor:
    return torch.full((1, 2, 1, n, 2), float(value))


def test_prefix_tree_matches_splits_and_evicts() -> None:
    tree = PrefixTree(budget_bytes=10**6)
    tree.insert("a", [1, 2, 3, 4], torch.arange(4.0).view(1, 1, 1, 4, 1).expand(1, 2, 1, 4, 2))
    length, pieces = tree.match("a", [1, 2, 9])
    assert length == 2 and torch.cat(pieces, dim=-2)[0, 0, 0, :, 0].tolist() == [0.0, 1.0]
    assert tree.match("b", [1, 2])[0] == 0  # adapters never share keys/values
    tree.insert(
        "a", [1, 2, 7], torch.cat([torch.arange(2.0).view(1, 1, 1, 2, 1).expand(1, 2, 1, 2, 2), kv(1, 7)], -2)
    )
    length, pieces = tree.match("a", [1, 2, 7, 8])
    assert length == 3 and torch.cat(pieces, dim=-2)[0, 0, 0, :, 0].tolist() == [0.0, 1.0, 7.0]
    assert tree.match("a", [1, 2, 3, 4])[0] == 4  # the split kept the old branch whole
    tree.forget("a")
    assert tree.match("a", [1, 2])[0] == 0 and tree.bytes == 0


def test_prefix_tree_evicts_least_recently_used_leaves_within_its_budget() -> None:
    one_token = kv(1, 0).numel() * kv(1, 0).element_size()
    tree = PrefixTree(budget_bytes=6 * one_token)
    tree.insert("a", [1, 2, 3], kv(3, 1))
    tree.insert("a", [5, 6, 7], kv(3, 2))
    tree.match("a", [1, 2, 3])  # [1, 2, 3] used last
    tree.insert("a", [8, 9], kv(2, 3))
    assert tree.bytes <= 6 * one_token
    assert tree.match("a", [1, 2, 3])[0] == 3 and tree.match("a", [8, 9])[0] == 2
    assert tree.match("a", [5, 6, 7])[0] == 0
