"""Hugging Face transformers engine: batched, left-padded ``generate`` with per-row seeds and LoRA adapters.

* Rows are sorted by prompt length and cut into micro-batches, so padding stays small.
* The leading tokens all rows of a micro-batch share (system prompt, worked example) are computed once
  per adapter and copied into a static KV cache; prefill dominates CPU cost, so this matters.
* Sampling draws each row's randomness from its own generator seeded by the request seed (Gumbel-max
  over temperature-scaled, top-p-filtered logits), so a completion does not depend on its batch.
* Requests may name different LoRA adapters; one micro-batch then runs them together through PEFT's
  ``adapter_names`` (mixed-adapter batches). Adapter names follow `dits.engines.base`: ``SERVED`` (None)
  is the model the engine was started with, ``BASE`` the bare base model.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

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
from dits.errors import DitsError
from dits.models import ModelRef, quiet_libraries, resolve_model
from dits.utils import common_prefix_length, derive_seed

POLICY = "policy"
"""Name under which an engine started from an adapter folder hosts that adapter (its `SERVED` model)."""
MIN_SHARED_PREFIX = 16
PREFIX_GROUPING = 48
"""Rows of a micro-batch sharing at least this many leading tokens compute them once (KV reuse)."""


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the common leading tokens of all prompts, leaving every prompt at least one own token."""
    return common_prefix_length(prompts, limit=min(len(p) for p in prompts) - 1)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random stream per row (Gumbel-max trick).

    argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T); drawing the noise from a
    per-row generator makes each row's sample independent of the other rows in the batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative - sorted_scores.softmax(dim=-1) > self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators]).to(
            scores.device
        )
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        return scores + gumbel


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
        cache: str = "static",
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
        self.cache = cache  # "static" pre-allocates the KV cache: ~2x faster decoding on CPU than "dynamic"
        self.default_adapter: str | None = None
        self.stats = EngineStats()
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

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        """Create adapter ``name`` from a LoRA config and an in-memory PEFT state dict (probe adapters)."""
        from peft import get_peft_model, set_peft_model_state_dict

        if not hasattr(self.model, "peft_config"):
            self.model = get_peft_model(self.model, weights.config, adapter_name=name)
        else:
            self.model.add_adapter(name, weights.config)
        set_peft_model_state_dict(self.model, weights.state, adapter_name=name)
        self.model.eval()

    def remove_adapter(self, name: str) -> None:
        """Delete adapter ``name`` (another adapter is made active first, as PEFT expects)."""
        if name not in self.adapters():
            raise DitsError(f"adapter {name!r} is not loaded; loaded adapters: {self.adapters() or 'none'}")
        others = [a for a in self.adapters() if a != name]
        if others and name in self.model.active_adapters:
            self.model.set_adapter(others[0])
        self.model.delete_adapter(name)

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
        rows = [
            (
                index,
                sample,
                self.render(request),
                self._adapter_of(request),
                derive_seed(request.seed, sample),
            )
            for index, request in enumerate(requests)
            for sample in range(params.n)
        ]
        rows.sort(key=lambda row: (row[2][:PREFIX_GROUPING], len(row[2])))  # same prompt start together
        out: list[list[Completion | None]] = [[None] * params.n for _ in requests]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            completions = self._generate_batch(
                [r[2] for r in batch], [r[3] for r in batch], [r[4] for r in batch], params
            )
            for (index, sample, *_), completion in zip(batch, completions, strict=True):
                out[index][sample] = completion
        self.stats.calls += 1
        self.stats.requests += len(requests)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], adapters: list[str], seeds: list[int], params: SamplingParams
    ) -> list[Completion]:
        started = time.perf_counter()
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        shared = shared_prefix_length(prompts) if self.cache == "static" and len(prompts) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        # Layout per row: [shared prefix][left padding][rest of the prompt]. Positions come from the
        # attention mask, so padding in the middle is invisible to the model.
        input_ids = torch.tensor(
            [p[:shared] + [pad] * (width - len(p)) + p[shared:] for p in prompts], device=self.device
        )
        attention = torch.tensor(
            [[1] * shared + [0] * (width - len(p)) + [1] * (len(p) - shared) for p in prompts],
            device=self.device,
        )
        processors = LogitsProcessorList()
        if not params.greedy:
            processors.append(SeededSampler(seeds, params.temperature, params.top_p))
        kwargs: dict[str, Any] = {}
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with self._adapter_context(adapters) as adapter_kwargs:
            if shared:
                kwargs["cache"] = self._prefilled_cache(
                    input_ids[:, :shared], adapters, adapter_kwargs, width + params.max_new_tokens
                )
            else:
                kwargs["cache_implementation"] = self.cache
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                logits_processor=processors,
                pad_token_id=pad,
                **adapter_kwargs,
                **kwargs,
            )
        saved = shared * (len(prompts) - len(set(adapters)))
        self.stats.extra["prefill_tokens_saved"] = self.stats.extra.get("prefill_tokens_saved", 0) + saved
        completions = [self._completion(row[width:].tolist(), params) for row in output]
        prompt_tokens = sum(len(p) for p in prompts)
        self.stats.emit(
            BatchEvent(
                kind="generate",
                rows=len(prompts),
                prompt_tokens=prompt_tokens,
                computed_prompt_tokens=prompt_tokens - saved,
                generated_tokens=sum(c.num_tokens for c in completions),
                decode_steps=output.shape[1] - width,
                adapters=len(set(adapters)),
                seconds=time.perf_counter() - started,
            )
        )
        return completions

    def _prefilled_cache(
        self, prefix: torch.Tensor, adapters: list[str], adapter_kwargs: dict[str, Any], max_len: int
    ) -> Any:
        """A static KV cache whose first positions hold the shared prefix, computed once per adapter."""
        from transformers import StaticCache

        unique = sorted(set(adapters))
        rows = [unique.index(a) for a in adapters]
        extra = {"adapter_names": unique} if "adapter_names" in adapter_kwargs else {}
        out = self.model(
            input_ids=prefix[:1].expand(len(unique), -1), use_cache=True, logits_to_keep=1, **extra
        )
        index = torch.tensor(rows, device=self.device)
        cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        for layer, computed in zip(cache.layers, out.cache.layers, strict=True):
            layer.update(computed.keys.index_select(0, index), computed.values.index_select(0, index))
        return cache

    def _completion(self, new_ids: list[int], params: SamplingParams) -> Completion:
        eos = self.tokenizer.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos])
        stop_ids.add(self.tokenizer.pad_token_id)
        length = next((i for i, t in enumerate(new_ids) if t in stop_ids), len(new_ids))
        text = self.tokenizer.decode(new_ids[:length], skip_special_tokens=True)
        finish = "length" if length >= params.max_new_tokens else "stop"
        for stop in params.stop:
            if stop in text:
                text, finish = text.split(stop, 1)[0], "stop"
        self.stats.generated_tokens += length
        return Completion(text, length, finish)

    # ------------------------------------------------------------------ scoring
    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean token NLL of each text as a lone assistant message, under the base model (adapters off)."""
        self.stats.nll_texts += len(texts)
        prefix = self.tokenizer.apply_chat_template(
            [{"role": "system", "content": ""}], tokenize=True, add_generation_prompt=True, return_dict=False
        )
        encoded = []
        for text in texts:
            full = self.tokenizer.apply_chat_template(
                [{"role": "system", "content": ""}, {"role": "assistant", "content": text}],
                tokenize=True,
                return_dict=False,
            )
            encoded.append((list(full), len(prefix)))
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
        with ctx:
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_lp = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        values = []
        for row, (ids, start) in enumerate(batch):
            span = token_lp[row, start - 1 : len(ids) - 1]
            values.append(float(-span.mean()) if span.numel() else 0.0)
        tokens = sum(len(ids) for ids, _ in batch)
        self.stats.emit(
            BatchEvent("nll", len(batch), tokens, tokens, 0, 1, 1, time.perf_counter() - started)
        )
        return values

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError as exc:
        raise DitsError(f"engine.dtype must be auto, float32, bfloat16 or float16, not {name!r}") from exc
