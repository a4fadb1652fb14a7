"""Hugging Face transformers engine: continuous batching with prefix reuse, per-row seeds and LoRA adapters.

* Generation runs through `dits.engines.decoding.Decoder`: every prompt's longest cached prefix (per
  adapter) comes from a `PrefixTree` of keys and values (``kv_cache_mb``), so an agent's next turn
  computes only what was added since it last spoke and rollouts from a search-tree node start from the
  node's cached path; finished rows free their slot for waiting rows at once.
* Sampling draws each row's randomness from its own generator seeded by the request seed (Gumbel-max
  over temperature-scaled, top-p-filtered logits), so a completion does not depend on its batch.
* Requests may name different LoRA adapters; one batch then runs them together through PEFT's
  ``adapter_names`` (mixed-adapter batches). Adapter names follow `dits.engines.base`: ``SERVED`` (None)
  is the model the engine was started with, ``BASE`` the bare base model.
* A request's draft (`dits.engines.base.Draft`) is verified in the prompt's forward pass instead of
  decoded token by token, with the same result as decoding.
* ``nll`` always scores with adapters disabled (or with ``reference``, when the policy is a fully
  fine-tuned model): the frozen initial model of Optima's readability term.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dits.engines.base import (
    BASE,
    AdapterWeights,
    BatchEvent,
    Capabilities,
    Completion,
    EngineStats,
    GenerationRequest,
    SamplingParams,
)
from dits.engines.decoding import Decoder, Row
from dits.engines.kv_cache import PrefixTree
from dits.errors import DitsError
from dits.models import ModelRef, quiet_libraries, resolve_model
from dits.utils import derive_seed

POLICY = "policy"
"""Name under which an engine started from an adapter folder hosts that adapter (its `SERVED` model)."""


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HFEngine:
    """Text generation with a transformers causal LM (optionally wrapped by PEFT for adapters)."""

    capabilities = Capabilities(nll=True, adapters=True, mixed_adapter_batches=True, trainable_model=True)

    def __init__(
        self,
        model: str | ModelRef,
        *,
        batch_size: int = 32,
        device: str | None = None,
        dtype: str = "auto",
        kv_cache_mb: float = 1024,
        reference: str | ModelRef | None = None,
    ) -> None:
        quiet_libraries()
        ref = resolve_model(model) if isinstance(model, str) else model
        self.ref = ref
        self.device = pick_device(device)
        torch_dtype = _dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(ref.base)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch_dtype).to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        self.default_adapter: str | None = None
        self.stats = EngineStats()
        self.prefixes = PrefixTree(int(kv_cache_mb * 2**20))
        eos = self.tokenizer.eos_token_id
        self.stop_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.pad_token_id}
        self.decoder = Decoder(
            lambda: self.model,
            self._adapter_context,
            self.prefixes,
            slots=batch_size,
            stop_ids=self.stop_ids,
            stats=self.stats,
            dtype=torch_dtype,
            device=self.device,
        )
        if ref.adapter is not None:
            self.load_adapter(POLICY, ref.adapter)
            self.default_adapter = POLICY
        self.reference: Any = None  # the frozen initial model for `nll` when the policy is a full model
        if reference is not None:
            reference = resolve_model(reference) if isinstance(reference, str) else reference
            self.reference = AutoModelForCausalLM.from_pretrained(reference.base, dtype=torch_dtype).to(
                self.device
            )
            self.reference.eval()

    # ------------------------------------------------------------------ adapters
    def adapters(self) -> list[str]:
        return list(getattr(self.model, "peft_config", {}).keys())

    def trainable_model(self) -> Any:
        """The PEFT-wrapped (or plain) model generation runs on; adding the first adapter replaces it."""
        return self.model

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a saved PEFT adapter under ``name``."""
        from peft import PeftModel

        if not hasattr(self.model, "peft_config"):
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.eval()
        self.prefixes.forget(name)

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Create adapter ``name`` from a LoRA config and an in-memory PEFT state dict (probe adapters)."""
        self.model = weights.attach(self.model, name)
        self.prefixes.forget(name)

    def remove_adapter(self, name: str) -> None:
        """Delete adapter ``name`` (another adapter is made active first, as PEFT expects)."""
        if name not in self.adapters():
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        others = [a for a in self.adapters() if a != name]
        if others and name in self.model.active_adapters:
            self.model.set_adapter(others[0])
        self.model.delete_adapter(name)
        self.prefixes.forget(name)

    def weights_changed(self, name: str) -> None:
        """Adapter ``name`` was trained in place (`trainable_model`): its cached prefixes are stale."""
        self.prefixes.forget(name)

    def _adapter_of(self, request: GenerationRequest) -> str:
        name = request.adapter if request.adapter is not None else (self.default_adapter or BASE)
        if name != BASE and name not in self.adapters():
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        return name

    @contextmanager
    def _adapter_context(self, names: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Arguments and context that make one micro-batch run under ``names`` (one per row)."""
        unique = set(names)
        if unique == {BASE}:
            ctx = self.model.disable_adapter() if hasattr(self.model, "peft_config") else nullcontext()
            with ctx:
                yield {}
        elif len(unique) == 1:
            self.model.set_adapter(names[0])
            yield {}
        else:
            yield {"adapter_names": list(names)}

    # ------------------------------------------------------------------ generation
    def render(self, request: GenerationRequest) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            request.messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        return list(ids)

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        rows = []
        for request in requests:
            prompt, adapter = self.render(request), self._adapter_of(request)
            draft = self._draft_ids(request, params)
            rows += [Row(prompt, adapter, derive_seed(request.seed, k), list(draft)) for k in range(params.n)]
        self.decoder.run(rows, params, done=self._stop_string_check(params))
        completions = [self._completion(row, params) for row in rows]
        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.extra["prefill_tokens_saved"] = float(self.decoder.stats.cached_tokens)
        return [completions[i * params.n : (i + 1) * params.n] for i in range(len(requests))]

    def _draft_ids(self, request: GenerationRequest, params: SamplingParams) -> list[int]:
        """The request's draft as token ids (the stop token appended when the draft ended by stopping);
        none with stop strings, whose ends a draft cannot express."""
        if request.draft is None or params.stop:
            return []
        eos = self.tokenizer.eos_token_id
        end = [eos[0] if isinstance(eos, list) else eos] if request.draft.stopped else []
        return list(request.draft.token_ids)[: params.max_new_tokens] + end

    def _stop_string_check(self, params: SamplingParams) -> Any:
        if not params.stop:
            return None
        return lambda row: any(
            s in self.tokenizer.decode(row.generated, skip_special_tokens=True) for s in params.stop
        )

    def _completion(self, row: Row, params: SamplingParams) -> Completion:
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        finish = "length" if row.finish == "length" else "stop"
        for stop in params.stop:
            if stop in text:
                text, finish = text.split(stop, 1)[0], "stop"
        self.stats.generated_tokens += len(row.generated)
        return Completion(text, len(row.generated), finish, tuple(row.generated))

    # ------------------------------------------------------------------ scoring
    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean token NLL of each text as a lone assistant message, under the base model (adapters off)."""
        self.stats.nll_texts += len(texts)
        encoded = nll_inputs(self.tokenizer, texts)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i][0]))
        result = [0.0] * len(texts)
        for start in range(0, len(order), self.batch_size):
            ids = order[start : start + self.batch_size]
            for i, value in zip(ids, self._nll_batch([encoded[i] for i in ids]), strict=True):
                result[i] = value
        return result

    @torch.inference_mode()
    def _nll_batch(self, batch: list[tuple[list[int], int]]) -> list[float]:
        started = time.perf_counter()
        width = max(len(ids) for ids, _ in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=self.device)
        attention = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=self.device
        )
        model = self.reference if self.reference is not None else self.model
        ctx = model.disable_adapter() if hasattr(model, "peft_config") else nullcontext()
        first = min(start for _, start in batch) - 1  # scores are needed from here on only
        with ctx:
            logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=width - first).logits
        targets = input_ids[:, first + 1 :]
        token_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, reduction="none"
        )
        values = []
        for row, (ids, start) in enumerate(batch):
            span = token_nll[row, start - 1 - first : len(ids) - 1 - first]
            values.append(float(span.mean()) if span.numel() else 0.0)
        tokens = sum(len(ids) for ids, _ in batch)
        self.stats.emit(
            BatchEvent("nll", len(batch), tokens, len(batch) * width, 1, time.perf_counter() - started)
        )
        return values

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def nll_inputs(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], int]]:
    """Each text as a lone assistant message after an empty system prompt, rendered by the chat template:
    its token ids and the index of the first token scored (where the assistant's text starts)."""
    prefix = tokenizer.apply_chat_template(
        [{"role": "system", "content": ""}], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    return [
        (
            list(
                tokenizer.apply_chat_template(
                    [{"role": "system", "content": ""}, {"role": "assistant", "content": text}],
                    tokenize=True,
                    return_dict=False,
                )
            ),
            len(prefix),
        )
        for text in texts
    ]


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError as exc:
        raise DitsError(f"engine.dtype must be auto, float32, bfloat16 or float16, not {name!r}") from exc
