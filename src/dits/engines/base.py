"""The engine protocol: what every text-generation backend does, and what it declares it can do.

An engine turns chat requests into completions. Requests are batched by the caller (see
`dits.engines.batching`); engines may re-order and micro-batch internally but return results in
request order. Sampling is reproducible per request: a request's ``seed`` alone decides its random
draws, so the same request gives the same completion whatever else is in the batch.

Which weights a request runs under is named by ``GenerationRequest.adapter``, with one meaning for
every engine:

* `SERVED` (``None``, the default) — the model the engine was started with: its base model, plus its
  own adapter when it was started from a LoRA adapter folder;
* `BASE` (``"__base__"``) — the bare base model, every adapter off;
* any other name — a LoRA adapter the engine hosts (`Engine.load_adapter` / `Engine.add_adapter`).

`Engine.nll` always scores under the frozen initial model (Optima's readability term).

What an engine can do beyond generation is declared in `Capabilities`; code that needs a capability
checks it (`require`) and fails with one line instead of an ``AttributeError`` deep in a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from dits.errors import DitsError

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

SERVED: None = None
"""Adapter name meaning "the model the engine serves" (its base, or the adapter it was started from)."""
BASE = "__base__"
"""Adapter name meaning "the bare base model, every adapter off"."""


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


@dataclass(frozen=True)
class Draft:
    """Tokens a completion is expected to start with (e.g. θ*'s reply to the same view, when an influence
    probe replays θ*'s dialogue), and whether it ended by stopping. A hint only: an engine may verify a
    draft instead of decoding it, but the completion must be what generation without it gives."""

    token_ids: tuple[int, ...]
    stopped: bool


@dataclass
class GenerationRequest:
    """A chat to continue under ``adapter`` (see the module docstring), with its own random seed."""

    messages: list[Message]
    adapter: str | None = SERVED
    seed: int = 0
    draft: Draft | None = None


@dataclass
class Completion:
    """One generated continuation. ``num_tokens`` counts generated tokens (no prompt, no EOS);
    ``token_ids`` are those tokens where the engine has them (empty otherwise)."""

    text: str
    num_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class BatchEvent:
    """One forward pass of an in-process engine, for benchmarks (`EngineStats.observers`).

    ``kind``: ``prefill`` (new rows' uncached prompt tokens and drafts), ``decode`` (one token per
    running row) or ``nll`` (scoring). ``positions``: real input positions run through the model;
    ``padded``: positions including padding (rows × widest input); ``adapters``: distinct adapters.
    """

    kind: Literal["prefill", "decode", "nll"]
    rows: int
    positions: int
    padded: int
    adapters: int
    seconds: float


@dataclass
class EngineStats:
    """Counters an engine keeps so stages can report their budget; ``observers`` see every batch."""

    calls: int = 0
    requests: int = 0
    generated_tokens: int = 0
    nll_texts: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    observers: list[Callable[[BatchEvent], None]] = field(default_factory=list)

    def emit(self, event: BatchEvent) -> None:
        """Hand ``event`` to every observer."""
        for observer in self.observers:
            observer(event)


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond `Engine.generate` and `Engine.count_tokens`.

    ``nll``: `Engine.nll` scores texts. ``adapters``: it hosts LoRA adapters (load from a folder, add from
    in-memory weights, remove, list). ``mixed_adapter_batches``: requests under different adapters run
    in the same batch. ``trainable_model``: `Engine.trainable_model` returns its in-process PyTorch model,
    so influence probes can train adapters in place and generate with them without copying weights.
    """

    nll: bool = True
    adapters: bool = False
    mixed_adapter_batches: bool = False
    trainable_model: bool = False


@dataclass(frozen=True)
class AdapterWeights:
    """An in-memory LoRA adapter: its PEFT ``LoraConfig`` and its PEFT state dict (name → tensor)."""

    config: Any
    state: dict[str, Any]

    def attach(self, model: Any, name: str) -> Any:
        """Add these weights to ``model`` as adapter ``name`` (a bare model becomes a PEFT model); returns
        the model to use from now on, in eval mode."""
        from peft import get_peft_model, set_peft_model_state_dict

        if not hasattr(model, "peft_config"):
            model = get_peft_model(model, self.config, adapter_name=name)
        else:
            model.add_adapter(name, self.config)
        set_peft_model_state_dict(model, self.state, adapter_name=name)
        return model.eval()


@runtime_checkable
class Engine(Protocol):
    """Text generation behind one interface (fake, hf, and the server engines)."""

    stats: EngineStats
    capabilities: Capabilities

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        """Return ``params.n`` completions per request, in request order."""
        ...

    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean per-token negative log-likelihood of each text as one assistant message, under the
        frozen initial model (needs ``capabilities.nll``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokenizer tokens in ``text`` (no special tokens)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (chat template, special tokens), for building training records."""
        ...

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters currently hosted (empty without ``capabilities.adapters``)."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Host the saved PEFT adapter folder ``path`` under ``name``."""
        ...

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Host an in-memory adapter under ``name``."""
        ...

    def remove_adapter(self, name: str) -> None:
        """Stop hosting adapter ``name``."""
        ...

    def trainable_model(self) -> Any:
        """The in-process PyTorch (PEFT) model generation runs on (needs ``capabilities.trainable_model``).
        Whoever changes an adapter's weights in place calls `weights_changed` afterwards."""
        ...

    def weights_changed(self, name: str) -> None:
        """Adapter ``name``'s weights were changed in place: forget anything computed with the old ones."""
        ...


def require(engine: Engine, capability: str, purpose: str) -> None:
    """Fail with one line when ``engine`` lacks ``capability`` (a `Capabilities` field) for ``purpose``."""
    if not getattr(engine.capabilities, capability):
        raise DitsError(
            f"{purpose} needs an engine with {capability.replace('_', ' ')}; "
            f"engine {type(engine).__name__} does not offer it (use engine.kind=hf)"
        )
