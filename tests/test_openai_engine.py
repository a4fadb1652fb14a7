"""The server engine's request/response layer against `servers.VLLMStub` (no model server needed): retries,
one-line errors naming the URL, deterministic assignment to servers, bounded concurrency, counting, NLL
from prompt log-probs, adapters written as PEFT folders, and its config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dits.config import load_config
from dits.engines.base import Completion, GenerationRequest, SamplingParams
from dits.engines.factory import make_engine
from dits.engines.hf import HFEngine
from dits.engines.launch import free_port
from dits.engines.openai_server import OpenAIServerEngine
from dits.errors import DitsError
from dits.utils import derive_seed
from servers import VLLMStub
from test_engine_conformance import PROMPTS, chat, lora_weights

GREEDY = SamplingParams(max_new_tokens=5)


def engine_for(tiny_model: str, *urls: str, **options: Any) -> OpenAIServerEngine:
    return OpenAIServerEngine(tiny_model, base_urls=list(urls), server="vllm", backoff_s=0.01, **options)


@pytest.fixture
def stub(vllm_stub: VLLMStub) -> Iterator[VLLMStub]:
    """The session's stub, with its failures and delay reset after the test."""
    yield vllm_stub
    vllm_stub.fail_next, vllm_stub.dead, vllm_stub.delay_s = [], None, 0.0


def requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(chat(PROMPTS[i % len(PROMPTS)]), seed=i) for i in range(n)]


def test_429_and_5xx_are_retried_with_backoff(stub: VLLMStub, tiny_model: str) -> None:
    engine = engine_for(tiny_model, stub.url)
    expected = engine.generate(requests(1), GREEDY)
    stub.fail_next = [429, 500, 503]
    before = stub.requests
    assert engine.generate(requests(1), GREEDY)[0][0].text == expected[0][0].text
    assert stub.requests - before == 4


def test_a_dead_server_is_named_in_one_line(stub: VLLMStub, tiny_model: str) -> None:
    engine = engine_for(tiny_model, stub.url, retries=2)
    stub.dead = 500
    with pytest.raises(DitsError) as info:
        engine.generate(requests(6), GREEDY)
    message = str(info.value)
    assert "\n" not in message and stub.url in message
    assert "dead or broken" in message and "HTTP 500 to every one of 3 tries" in message


def test_no_server_and_a_wrong_model_name_say_what_to_do(stub: VLLMStub, tiny_model: str) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(DitsError, match=f"no server answers at {down} .*start it") as info:
        engine_for(tiny_model, down, retries=1)
    assert "\n" not in str(info.value)
    with pytest.raises(DitsError, match="does not serve model 'nope' .*engine.served_model"):
        engine_for(tiny_model, stub.url, served_model="nope")


def test_samples_go_to_the_server_their_seed_picks(stub: VLLMStub, tiny_model: str) -> None:
    other = VLLMStub(tiny_model)
    try:
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=5)
        one = engine_for(tiny_model, stub.url).generate(requests(8), params)
        before = (stub.requests, other.requests)
        two = engine_for(tiny_model, stub.url, other.url).generate(requests(8), params)
        assert [[c.text for c in cs] for cs in one] == [[c.text for c in cs] for cs in two]
        assert stub.requests > before[0] + 1 and other.requests > before[1] + 1  # both got samples
    finally:
        other.close()


def test_concurrency_is_bounded_per_server(stub: VLLMStub, tiny_model: str) -> None:
    engine = engine_for(tiny_model, stub.url, max_concurrency=3)
    stub.delay_s, stub.max_in_flight = 0.05, 0
    out = engine.generate(requests(12), GREEDY)
    assert len(out) == 12 and stub.max_in_flight == 3


def test_counts_and_nll_match_the_in_process_engine(stub: VLLMStub, tiny_model: str) -> None:
    engine, local = engine_for(tiny_model, stub.url), HFEngine(tiny_model)
    params = SamplingParams(temperature=1.0, max_new_tokens=7)
    served = engine.generate(requests(4), params)
    # the stub samples request seed s (the engine's derive_seed(seed, 0)) with its own derive_seed(s, 0)
    here = local.generate(
        [GenerationRequest(r.messages, seed=derive_seed(r.seed, 0)) for r in requests(4)], params
    )
    assert [(c[0].text, c[0].num_tokens, c[0].finish_reason) for c in served] == [
        (c[0].text, c[0].num_tokens, c[0].finish_reason) for c in here
    ]
    assert engine.stats.generated_tokens == sum(c[0].num_tokens for c in here)
    stopped = SamplingParams(max_new_tokens=7, stop=("\n\n",))  # the tiny model's greedy text is newlines
    assert local.generate(requests(1), stopped)[0][0].num_tokens == 2
    assert engine.generate(requests(1), stopped)[0][0] == Completion("", 2, "stop")
    texts = ["the cat sat on the mat", "zq xv jjk"]
    assert engine.nll(texts) == pytest.approx(local.nll(texts), rel=1e-4)


def test_the_eos_token_servers_count_is_not_a_generated_token(stub: VLLMStub, tiny_model: str) -> None:
    from openai.types.chat import ChatCompletion

    engine = engine_for(tiny_model, stub.url)

    def answer(finish: str, stop_reason: str | None, text: str = "Paris.") -> Completion:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [choice],
            "usage": usage,
        }
        return engine._completion(
            ChatCompletion.model_validate(body), chat("x"), SamplingParams(stop=("END",))
        )

    assert answer("stop", None) == Completion("Paris.", 4, "stop")  # ended at EOS, counted by the server
    assert answer("stop", "END") == Completion("Paris.", 5, "stop")  # a stop string's tokens count
    assert answer("stop", None, "Paris.END tail") == Completion("Paris.", 5, "stop")  # kept by the server
    assert answer("length", None) == Completion("Paris.", 5, "length")


def test_in_memory_adapters_are_written_as_peft_folders(
    stub: VLLMStub, tiny_model: str, tmp_path: Path
) -> None:
    engine = engine_for(tiny_model, stub.url, adapter_dir=str(tmp_path))
    local = HFEngine(tiny_model)
    weights = lora_weights(engine, 5)
    engine.add_adapter("probe", weights)
    local.add_adapter("probe", weights)
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    request = [GenerationRequest(chat(PROMPTS[0]), adapter="probe")]
    assert engine.generate(request, GREEDY)[0][0].text == local.generate(request, GREEDY)[0][0].text
    engine.add_adapter("probe", lora_weights(engine, 6))  # replaced: the old folder goes
    assert len(list(tmp_path.iterdir())) == 1
    engine.remove_adapter("probe")
    assert not list(tmp_path.iterdir()) and "probe" not in stub.engine.adapters()


def test_a_server_without_runtime_lora_loading_says_how_to_enable_it(tiny_model: str) -> None:
    stub = VLLMStub(tiny_model, lora_endpoints=False)
    try:
        engine = engine_for(tiny_model, stub.url)
        with pytest.raises(DitsError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"):
            engine.add_adapter("x", lora_weights(engine, 1))
    finally:
        stub.close()


def test_capabilities_follow_the_server_kind(stub: VLLMStub, tiny_model: str) -> None:
    generic = OpenAIServerEngine(tiny_model, base_urls=[stub.url], server="generic")
    assert not generic.capabilities.adapters and generic.capabilities.nll
    with pytest.raises(DitsError, match="engine.server=generic has no LoRA adapter endpoints"):
        generic.add_adapter("x", lora_weights(generic, 1))
    with pytest.raises(DitsError, match="no model in this process to train"):
        generic.trainable_model()
    local = HFEngine(tiny_model)
    assert generic.nll(["hello there"]) == pytest.approx(local.nll(["hello there"]), rel=1e-4)  # local scorer


def test_config_builds_the_server_engine(stub: VLLMStub, tiny_model: str) -> None:
    cfg = load_config(
        None,
        [f"model={tiny_model}", "engine.kind=openai", "engine.server=vllm", f"engine.base_urls={stub.url}"],
    )
    assert cfg.engine.base_urls == [stub.url]
    engine = make_engine(cfg.engine, cfg.model)
    assert isinstance(engine, OpenAIServerEngine) and engine.model_name == tiny_model
    with pytest.raises(DitsError, match="engine.server"):
        load_config(None, ["engine.server=sglang-ish"])
