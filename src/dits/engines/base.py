"""The text-generation protocol every engine implements.

An engine turns chat requests into completions. Requests are batched by the caller (see
`dits.engines.batching`); engines may re-order and micro-batch internally but must return results in
request order. Sampling is reproducible per request: a request's `seed` alone decides its random draws,
so the same request gives the same completion whatever else is in the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

BASE_ADAPTER = None
"""Adapter name meaning "the model without any adapter"."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationRequest:
    """A chat to continue, optionally under a named LoRA adapter, with its own random seed."""

    messages: list[Message]
    adapter: str | None = BASE_ADAPTER
    seed: int = 0


@dataclass
class Completion:
    """One generated continuation. ``num_tokens`` counts generated tokens (no prompt, no EOS)."""

    text: str
    num_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass
class EngineStats:
    """Counters an engine keeps so stages can report their budget."""

    calls: int = 0
    requests: int = 0
    generated_tokens: int = 0
    nll_texts: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """Text generation behind one interface (fake, hf, openai-http, vllm)."""

    stats: EngineStats

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        """Return ``params.n`` completions per request, in request order."""
        ...

    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean per-token negative log-likelihood of each text as one assistant message (base model)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokenizer tokens in ``text`` (no special tokens)."""
        ...

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters currently loaded."""
        ...


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (independent of Python's hash randomisation)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)
