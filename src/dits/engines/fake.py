"""A scripted engine for tests: deterministic per request seed, records every call."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from dits.engines.base import (
    Completion,
    EngineStats,
    GenerationRequest,
    SamplingParams,
    derive_seed,
)

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
    """Deterministic stand-in for a model. Token counts are whitespace words."""

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
        out = []
        for request in requests:
            completions = []
            for sample in range(params.n):
                rng = random.Random(derive_seed(request.seed, sample))
                text = self.responder(request, params, rng)
                words = text.split()
                finish = "length" if len(words) > params.max_new_tokens else "stop"
                text = " ".join(words[: params.max_new_tokens]) if finish == "length" else text
                completions.append(Completion(text, min(len(words), params.max_new_tokens), finish))
                self.stats.generated_tokens += completions[-1].num_tokens
            out.append(completions)
        return out

    def nll(self, texts: Sequence[str]) -> list[float]:
        self.nll_calls.append(list(texts))
        self.stats.nll_texts += len(texts)
        return [self.nll_fn(t) for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def add_adapter(self, name: str) -> None:
        """Register an adapter name (the responder sees it as ``request.adapter``)."""
        self._adapters.add(name)

    def load_adapter(self, name: str, path: object) -> None:
        """Pretend to load a saved adapter (only its name matters to the fake engine)."""
        self.add_adapter(name)

    def adapters(self) -> list[str]:
        return sorted(self._adapters)
