"""A scripted engine for tests: deterministic per request seed, records every call."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from dits.engines.base import (
    BASE,
    SERVED,
    AdapterWeights,
    Capabilities,
    Completion,
    EngineStats,
    GenerationRequest,
    SamplingParams,
)
from dits.errors import DitsError
from dits.utils import derive_seed

Responder = Callable[[GenerationRequest, SamplingParams, random.Random], str]
"""Produces one completion text for a request; ``rng`` is seeded from the request seed and sample index."""


def default_responder(request: GenerationRequest, params: SamplingParams, rng: random.Random) -> str:
    """Greedy: a fixed answer; sampling: one of a few answers chosen by the request's seed."""
    options = ["<A>paris</A>", "maybe <A>paris</A>", "<A>london</A>", "I am not sure yet.", "<A>rome</A>"]
    return options[0] if params.greedy else rng.choice(options)


def cycling_responder(texts: Sequence[str]) -> Responder:
    """Answer with ``texts`` in turn, whatever the request (useful for scripted dialogues)."""
    counter = iter(range(1 << 62))

    def respond(request: GenerationRequest, params: SamplingParams, rng: random.Random) -> str:
        return texts[next(counter) % len(texts)]

    return respond


class FakeEngine:
    """Deterministic stand-in for a model. Token counts are whitespace words. It hosts adapters by name
    only (the responder sees ``request.adapter``); it has no weights to train."""

    capabilities = Capabilities(nll=True, adapters=True, mixed_adapter_batches=True, trainable_model=False)

    def __init__(
        self,
        responder: Responder = default_responder,
        nll_fn: Callable[[str], float] | None = None,
    ) -> None:
        self.responder = responder
        self.nll_fn = nll_fn or (lambda text: 1.0 + (len(text) % 7) / 10)
        self.calls: list[tuple[list[GenerationRequest], SamplingParams]] = []
        self.nll_calls: list[list[str]] = []
        self.stats = EngineStats()
        self._adapters: set[str] = set()

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        self.calls.append((list(requests), params))
        self.stats.calls += 1
        self.stats.requests += len(requests)
        for request in requests:
            if request.adapter not in (SERVED, BASE) and request.adapter not in self._adapters:
                raise DitsError(
                    f"adapter {request.adapter!r} is not loaded; loaded adapters: {self.adapters() or 'none'}"
                )
        out = []
        for request in requests:
            completions = []
            for sample in range(params.n):
                rng = random.Random(derive_seed(request.seed, sample))
                completions.append(self._complete(self.responder(request, params, rng), params))
                self.stats.generated_tokens += completions[-1].num_tokens
            out.append(completions)
        return out

    @staticmethod
    def _complete(text: str, params: SamplingParams) -> Completion:
        """The responder's text as a completion: cut at a stop string, or at the token cap (words)."""
        for stop in params.stop:
            if stop in text:
                text = text.split(stop, 1)[0]
                return Completion(text, len(text.split()), "stop")
        words = text.split()
        if len(words) >= params.max_new_tokens:
            return Completion(" ".join(words[: params.max_new_tokens]), params.max_new_tokens, "length")
        return Completion(text, len(words), "stop")

    def nll(self, texts: Sequence[str]) -> list[float]:
        self.nll_calls.append(list(texts))
        self.stats.nll_texts += len(texts)
        return [self.nll_fn(t) for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @property
    def tokenizer(self) -> None:
        """A scripted engine has no tokenizer."""
        return None

    def add_adapter(self, name: str, weights: AdapterWeights | None = None) -> None:
        """Host adapter ``name`` (only its name matters to the fake engine)."""
        self._adapters.add(name)

    def load_adapter(self, name: str, path: str) -> None:
        """Pretend to load a saved adapter (only its name matters to the fake engine)."""
        self.add_adapter(name)

    def remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        self._adapters.remove(name)

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    def weights_changed(self, name: str) -> None:
        """Nothing is cached by a scripted engine."""

    def trainable_model(self) -> None:
        raise DitsError("the fake engine has no model to train; use engine.kind=hf")
