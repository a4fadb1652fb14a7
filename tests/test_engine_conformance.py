"""One conformance suite for every engine: what the `dits.engines.base.Engine` protocol promises.

Each engine is built by a factory in `ENGINES`; an engine that does not declare a capability is checked
to refuse it with a one-line `DitsError` instead. Add a new engine to `ENGINES` and the whole suite runs
against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dits.engines.base import (
    BASE,
    SERVED,
    AdapterWeights,
    BatchEvent,
    Engine,
    GenerationRequest,
    SamplingParams,
    require,
)
from dits.errors import DitsError

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello to Bob.", "Count to three."]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def fake_engine(request: pytest.FixtureRequest) -> Engine:
    from dits.engines.fake import FakeEngine

    return FakeEngine()


def hf_engine(request: pytest.FixtureRequest) -> Engine:
    from dits.engines.hf import HFEngine

    return HFEngine(request.getfixturevalue("tiny_model"), batch_size=3)


def openai_engine(server_fixture: str, server: str) -> Callable[[pytest.FixtureRequest], Engine]:
    """The server engine against the (session-wide) server that fixture ``server_fixture`` starts."""

    def build(request: pytest.FixtureRequest) -> Engine:
        from dits.engines.openai_server import OpenAIServerEngine

        url = request.getfixturevalue(server_fixture).url
        return OpenAIServerEngine(request.getfixturevalue("tiny_model"), base_urls=[url], server=server)

    return build


ENGINES: dict[str, Callable[[pytest.FixtureRequest], Engine]] = {
    "fake": fake_engine,
    "hf": hf_engine,
    "openai-vllm-stub": openai_engine("vllm_stub", "vllm"),
    "openai-transformers-serve": openai_engine("transformers_server", "transformers"),
}
"""Each engine's factory; it takes the server fixtures it needs from the test's ``request``."""


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield ENGINES[request.param](request)


def lora_weights(engine: Engine, seed: int) -> AdapterWeights:
    """A random, non-zero LoRA adapter on the engine's model (a name-only adapter for an engine without one)."""
    if getattr(engine, "ref", None) is None:
        return AdapterWeights(None, {})
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(seed)
    model: Any = get_peft_model(_fresh_base(engine), config)
    from peft import get_peft_model_state_dict

    return AdapterWeights(config, {k: v.clone() for k, v in get_peft_model_state_dict(model).items()})


def _fresh_base(engine: Engine) -> Any:
    from transformers import AutoModelForCausalLM

    ref: Any = engine.ref
    return AutoModelForCausalLM.from_pretrained(ref.base)


def test_completions_come_back_per_request_in_order_with_counts(engine: Engine) -> None:
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    requests = [GenerationRequest(chat(p), seed=i) for i, p in enumerate(PROMPTS)]
    before = engine.stats.generated_tokens
    out = engine.generate(requests, params)
    assert [len(c) for c in out] == [2] * len(PROMPTS)
    for completions in out:
        for c in completions:
            assert 0 <= c.num_tokens <= 6 and c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "length") == (c.num_tokens >= 6)
    assert engine.stats.generated_tokens - before == sum(c.num_tokens for cs in out for c in cs)
    alone = [engine.generate([r], params)[0] for r in reversed(requests)][::-1]
    assert [[c.text for c in cs] for cs in alone] == [[c.text for c in cs] for cs in out]


def test_a_seed_reproduces_its_sample_and_greedy_ignores_it(engine: Engine) -> None:
    sampled = SamplingParams(temperature=1.0, max_new_tokens=6)
    first = engine.generate([GenerationRequest(chat(PROMPTS[0]), seed=7)], sampled)
    again = engine.generate([GenerationRequest(chat(PROMPTS[0]), seed=7)], sampled)
    assert first[0][0].text == again[0][0].text
    greedy = SamplingParams(max_new_tokens=6)
    a = engine.generate([GenerationRequest(chat(PROMPTS[1]), seed=1)], greedy)
    b = engine.generate([GenerationRequest(chat(PROMPTS[1]), seed=2)], greedy)
    assert a[0][0].text == b[0][0].text


def test_sampling_differs_between_seeds(engine: Engine) -> None:
    """Catches servers that ignore the sampling fields (e.g. ``transformers serve`` without ``do_sample``)."""
    sampled = SamplingParams(temperature=1.0, max_new_tokens=6)
    out = engine.generate([GenerationRequest(chat(PROMPTS[0]), seed=s) for s in range(6)], sampled)
    assert len({c[0].text for c in out}) > 1


def test_stop_strings_are_cut_from_the_text(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=8)
    (full,) = engine.generate([GenerationRequest(chat(PROMPTS[2]))], params)
    text = full[0].text
    if len(text) < 2:
        pytest.skip("the engine generated too little text to cut")
    stop = text[len(text) // 2 :][:2]
    (cut,) = engine.generate(
        [GenerationRequest(chat(PROMPTS[2]))], SamplingParams(max_new_tokens=8, stop=(stop,))
    )
    assert stop not in cut[0].text and text.startswith(cut[0].text)


def test_nll_and_token_counts(engine: Engine) -> None:
    if not engine.capabilities.nll:
        with pytest.raises(DitsError):
            engine.nll(["x"])
        return
    values = engine.nll(["the cat sat on the mat", "zq xv jjk"])
    assert len(values) == 2 and all(v > 0 for v in values)
    assert engine.count_tokens("hello world, this is a test") >= 2


def test_adapters_are_hosted_listed_used_and_removed(engine: Engine, tmp_path: Path) -> None:
    if not engine.capabilities.adapters:
        with pytest.raises(DitsError):
            require(engine, "adapters", "this test")
        return
    engine.add_adapter("one", lora_weights(engine, 1))
    engine.add_adapter("two", lora_weights(engine, 2))
    assert {"one", "two"} <= set(engine.adapters())
    params = SamplingParams(max_new_tokens=6)
    names = ["one", "two", BASE, SERVED, "one"]
    requests = [GenerationRequest(chat(PROMPTS[i % 4]), adapter=n, seed=i) for i, n in enumerate(names)]
    together = [c[0].text for c in engine.generate(requests, params)]
    alone = [engine.generate([r], params)[0][0].text for r in requests]
    if engine.capabilities.mixed_adapter_batches:
        assert together == alone
    with pytest.raises(DitsError, match="not loaded"):
        engine.generate([GenerationRequest(chat("x"), adapter="missing")], params)
    engine.remove_adapter("one")
    assert "one" not in engine.adapters() and "two" in engine.adapters()
    with pytest.raises(DitsError, match="not loaded"):
        engine.remove_adapter("one")


def test_an_adapter_folder_loads_like_its_weights(engine: Engine, tmp_path: Path) -> None:
    if not engine.capabilities.adapters:
        return
    weights = lora_weights(engine, 3)
    folder = tmp_path / "adapter"
    if weights.state:
        from peft import get_peft_model, set_peft_model_state_dict

        model: Any = get_peft_model(_fresh_base(engine), weights.config)
        set_peft_model_state_dict(model, weights.state)
        model.save_pretrained(str(folder))
    engine.load_adapter("from_folder", str(folder))
    engine.add_adapter("from_memory", weights)
    params = SamplingParams(max_new_tokens=6)
    texts = [
        engine.generate([GenerationRequest(chat(PROMPTS[3]), adapter=name)], params)[0][0].text
        for name in ("from_folder", "from_memory")
    ]
    assert texts[0] == texts[1]


def test_trainable_model_is_offered_or_refused(engine: Engine) -> None:
    if engine.capabilities.trainable_model:
        import torch

        assert isinstance(engine.trainable_model(), torch.nn.Module)
    else:
        with pytest.raises(DitsError):
            engine.trainable_model()


def test_observers_see_every_forward_pass_of_an_in_process_engine(engine: Engine) -> None:
    events: list[BatchEvent] = []
    engine.stats.observers.append(events.append)
    out = engine.generate([GenerationRequest(chat(p)) for p in PROMPTS], SamplingParams(max_new_tokens=4))
    if events:  # engines that run a model in this process report their passes
        assert {e.kind for e in events} <= {"prefill", "decode", "nll"}
        assert all(e.rows >= 1 and e.rows <= e.positions <= e.padded and e.seconds >= 0 for e in events)
        decoded = sum(e.rows for e in events if e.kind == "decode")
        assert decoded <= sum(c[0].num_tokens for c in out)  # the first token comes from the prefill
