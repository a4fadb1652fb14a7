"""Engines: fake determinism, HF batching invariance, mixed-adapter batches, NLL scoring."""

from __future__ import annotations

import pytest
import torch

from dits.engines.base import AdapterWeights, GenerationRequest, SamplingParams
from dits.engines.fake import FakeEngine
from dits.errors import DitsError
from dits.utils import derive_seed


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


PROMPTS = [
    "Hello there, who are you?",
    "Count to three.",
    "Name a color",
    "What is the capital of France and why?",
]


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert derive_seed(1, "a", 2) != derive_seed(1, "a", 3)


def test_fake_engine_depends_only_on_request_seed() -> None:
    engine = FakeEngine()
    params = SamplingParams(temperature=1.0, n=3)
    together = engine.generate([GenerationRequest(chat(p), seed=i) for i, p in enumerate(PROMPTS)], params)
    alone = [engine.generate([GenerationRequest(chat(p), seed=i)], params)[0] for i, p in enumerate(PROMPTS)]
    assert together == alone
    assert len(engine.calls) == 1 + len(PROMPTS)


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    from dits.engines.hf import HFEngine

    return HFEngine(tiny_model, batch_size=3)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_hf_results_do_not_depend_on_batch(hf_engine, temperature) -> None:
    params = SamplingParams(temperature=temperature, max_new_tokens=12)
    requests = [GenerationRequest(chat(p), seed=10 + i) for i, p in enumerate(PROMPTS)]
    together = hf_engine.generate(requests, params)
    alone = [hf_engine.generate([r], params)[0] for r in requests]
    assert [c[0].text for c in together] == [c[0].text for c in alone]
    assert all(c[0].num_tokens <= 12 for c in together)


def test_hf_sampling_uses_seed_and_n(hf_engine) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=10, n=3)
    (first,) = hf_engine.generate([GenerationRequest(chat("Tell me a story"), seed=1)], params)
    (again,) = hf_engine.generate([GenerationRequest(chat("Tell me a story"), seed=1)], params)
    (other,) = hf_engine.generate([GenerationRequest(chat("Tell me a story"), seed=2)], params)
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.text for c in first}) > 1
    assert [c.text for c in first] != [c.text for c in other]


def test_mixed_adapter_batch_equals_one_adapter_at_a_time(tiny_model) -> None:
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    from dits.engines.hf import HFEngine

    engine = HFEngine(tiny_model, batch_size=8)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    for index, name in enumerate(["a", "b"]):
        torch.manual_seed(index)
        engine.add_adapter(name, AdapterWeights(config, {}))
        state = {
            k: torch.randn_like(v) * 0.5
            for k, v in get_peft_model_state_dict(engine.model, adapter_name=name).items()
        }
        set_peft_model_state_dict(engine.model, state, adapter_name=name)
    params = SamplingParams(max_new_tokens=8)
    names = ["a", "b", "__base__", "a", "b"]
    requests = [GenerationRequest(chat(PROMPTS[i % 4]), adapter=n, seed=i) for i, n in enumerate(names)]
    mixed = [c[0].text for c in engine.generate(requests, params)]
    single = [engine.generate([r], params)[0][0].text for r in requests]
    assert mixed == single
    assert len(set(mixed[:3])) > 1  # adapters really change the output
    with pytest.raises(DitsError, match="not loaded"):
        engine.generate([GenerationRequest(chat("x"), adapter="missing")], params)


def test_hf_nll_scores_text_under_base_model(hf_engine) -> None:
    values = hf_engine.nll(["the cat sat on the mat", "zq xv jjk"])
    assert all(v > 0 for v in values)
    assert hf_engine.nll(["the cat sat on the mat"])[0] == pytest.approx(values[0], rel=1e-4)
    assert hf_engine.count_tokens("hello world") >= 2


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_reuse_gives_the_same_completions(tiny_model, temperature) -> None:
    from peft import LoraConfig

    from dits.engines.hf import HFEngine

    system = "You are a careful assistant who answers every question in a few words and nothing else. " * 3
    requests = [
        GenerationRequest(
            [{"role": "system", "content": system}, {"role": "user", "content": p}],
            adapter=["__base__", "a"][i % 2],
            seed=i,
        )
        for i, p in enumerate(PROMPTS)
    ]
    params = SamplingParams(temperature=temperature, max_new_tokens=10)
    outputs = {}
    for cache in ("static", "dynamic"):
        engine = HFEngine(tiny_model, batch_size=8, cache=cache)
        torch.manual_seed(0)
        engine.add_adapter(
            "a", AdapterWeights(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), {})
        )
        outputs[cache] = [c[0].text for c in engine.generate(requests, params)]
        saved = engine.stats.extra.get("prefill_tokens_saved", 0)
        assert (saved > 0) == (cache == "static")
    assert outputs["static"] == outputs["dynamic"]
