"""Engines: fake determinism, HF batching invariance, mixed-adapter batches, NLL scoring."""

from __future__ import annotations

import pytest

from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.fake import FakeEngine


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


PROMPTS = [
    "Hello there, who are you?",
    "Count to three.",
    "Name a color",
    "What is the capital of France and why?",
]


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


def test_hf_nll_scores_text_under_base_model(hf_engine) -> None:
    values = hf_engine.nll(["the cat sat on the mat", "zq xv jjk"])
    assert all(v > 0 for v in values)
    assert hf_engine.nll(["the cat sat on the mat"])[0] == pytest.approx(values[0], rel=1e-4)
    assert hf_engine.count_tokens("hello world") >= 2
