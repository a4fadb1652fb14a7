"""The probe primitive: θ* as a LoRA adapter, one optimizer step on a group of pairs, exact restore.

All policies are LoRA adapters on the engine's one base model; the engine must offer its model for
training in place (`Capabilities.trainable_model`) and host adapters. The SFT adapter of the iteration
(``policy``) is the frozen DPO reference; θ* is a new adapter initialised from its weights (or a fresh
LoRA when there is no SFT adapter; the reference is then the adapter-disabled base) and warmed up with
a few AdamW steps on the candidate pool (`Prober.warm_up`). A probe (`Prober.stepped`) takes exactly one
step from θ* on one group's pairs — a fresh AdamW (its first step is ≈ lr·sign(g)) or plain SGD, no
weight decay, no clipping — and restores θ* bit for bit afterwards (a copy of θ* is kept; gradients are
dropped, the optimizer is discarded). Steps run in train mode with every dropout at 0, so they are
deterministic; generation happens in eval mode.

Pairs are tokenised as TRL's ``DPOTrainer`` does (prompt with the generation prompt, completion = the
rest of prompt + answer, cut to ``max_length``; prompts fitted by `dits.train.records.fit_dpo_rows`), and
`dpo_loss` is TRL's sigmoid loss (+ NLL per chosen token for ``nll_weight``), so a probe optimises the
objective of the final DPO stage. Reference log-probs of every pair are computed once, at construction.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from peft import get_peft_model_state_dict

from dits.config import LoraSettings, TrainConfig
from dits.engines.base import AdapterWeights, Engine, require
from dits.errors import DitsError
from dits.search.pairs import PreferencePair
from dits.train.common import lora_config
from dits.train.records import ChatTokenizer, chat_ids, dpo_rows, fit_dpo_rows
from dits.utils import common_prefix_length, derive_seed

Optimizer = Literal["adam", "sgd"]
THETA = "theta_star"


@dataclass(frozen=True)
class MaskedSequence:
    """Token ids and a 0/1 mask of the tokens whose log-probabilities count."""

    ids: list[int]
    mask: list[int]


@dataclass(frozen=True)
class TokenizedPair:
    """One preference pair as two scored sequences (prompt + chosen, prompt + rejected)."""

    id: str
    chosen: MaskedSequence
    rejected: MaskedSequence


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: ChatTokenizer, max_length: int
) -> tuple[list[TokenizedPair], list[str]]:
    """Pairs as TRL tokenises them, and the ids of pairs whose prompt cannot fit ``max_length``."""
    kept, unfit = [], []
    for pair, row in zip(pairs, dpo_rows(pairs), strict=True):
        fitted, _ = fit_dpo_rows([row], tokenizer, max_length)
        if not fitted:
            unfit.append(pair.id)
            continue
        prompt = chat_ids(tokenizer, fitted[0]["prompt"], generation_prompt=True)
        sides = []
        for side in ("chosen", "rejected"):
            full = chat_ids(tokenizer, fitted[0]["prompt"] + fitted[0][side])[:max_length]
            if full[: len(prompt)] != prompt:
                raise DitsError("the chat template does not render a prompt as a prefix of prompt + answer")
            sides.append(MaskedSequence(full, [0] * len(prompt) + [1] * (len(full) - len(prompt))))
        kept.append(TokenizedPair(pair.id, *sides))
    return kept, unfit


def sequence_logps(
    model: Any, sequences: Sequence[MaskedSequence], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log p(token | prefix) over each sequence's masked tokens, and how many there are.

    One left-padded batch (explicit position ids); the LM head runs only on the tail that holds masked
    tokens (``logits_to_keep``), which keeps memory at batch × completion length × vocabulary.
    """
    width = max(len(s.ids) for s in sequences)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad_id] * (width - len(s.ids)) + s.ids for s in sequences], device=device)
    attention = torch.tensor(
        [[0] * (width - len(s.ids)) + [1] * len(s.ids) for s in sequences], device=device
    )
    mask = torch.tensor([[0] * (width - len(s.ids)) + s.mask for s in sequences], device=device)
    mask[:, 0] = 0  # the first token is never predicted
    first = [next((i for i in range(1, len(s.ids)) if s.mask[i]), len(s.ids)) for s in sequences]
    keep = max(len(s.ids) - f for s, f in zip(sequences, first, strict=True)) + 1
    logits = (
        model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=keep,
            use_cache=False,
        )
        .logits[:, :-1]
        .float()
    )
    targets, counted = ids[:, width - keep + 1 :], mask[:, width - keep + 1 :].float()
    token_logps = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
    return (token_logps * counted).sum(-1), counted.sum(-1)


def shared_prompt_length(pair: TokenizedPair) -> int:
    """Leading tokens both sides of ``pair`` share and score none of, leaving each side ≥ 1 own token."""
    chosen, rejected = pair.chosen, pair.rejected
    unscored = min(_first_scored(chosen), _first_scored(rejected))
    limit = min(len(chosen.ids) - 1, len(rejected.ids) - 1, unscored)
    return max(common_prefix_length([chosen.ids, rejected.ids], limit=limit), 1)


def _first_scored(sequence: MaskedSequence) -> int:
    """Position of the first token whose log-probability counts (the length if none does)."""
    return sequence.mask.index(1) if 1 in sequence.mask else len(sequence.mask)


def pair_logps(model: Any, pairs: Sequence[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` of ``[chosen, rejected]`` for every pair (in that order), computing each pair's
    prompt once: a prompt pass (one row per pair) fills a KV cache that both answers continue from.

    Tree-search pairs share long prompts (system prompt, context, history) and differ in a short answer,
    so this runs about half the tokens of scoring both sequences whole; gradients flow through the cache.
    """
    device = next(model.parameters()).device
    shared = [shared_prompt_length(p) for p in pairs]
    width = max(shared)
    prompt_ids = torch.tensor(
        [[pad_id] * (width - n) + p.chosen.ids[:n] for p, n in zip(pairs, shared, strict=True)], device=device
    )
    prompt_attention = torch.tensor([[0] * (width - n) + [1] * n for n in shared], device=device)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_attention,
        position_ids=(prompt_attention.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.cache
    cache.batch_repeat_interleave(2)  # row 2i continues with pair i's chosen answer, 2i + 1 its rejected
    sides = [(s, n) for p, n in zip(pairs, shared, strict=True) for s in (p.chosen, p.rejected)]
    own = [len(s.ids) - n for s, n in sides]  # each side's tokens after the shared prompt
    rest = max(own)
    ids = torch.tensor(
        [s.ids[n:] + [pad_id] * (rest - k) for (s, n), k in zip(sides, own, strict=True)], device=device
    )
    mask = torch.tensor(
        [s.mask[n:] + [0] * (rest - k) for (s, n), k in zip(sides, own, strict=True)], device=device
    )
    answer_attention = torch.tensor([[1] * k + [0] * (rest - k) for k in own], device=device)
    attention = torch.cat([prompt_attention.repeat_interleave(2, dim=0), answer_attention], dim=1)
    positions = torch.tensor([[n + i for i in range(rest)] for _, n in sides], device=device)
    answer_logits = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=positions,
        cache=cache,
        use_cache=True,
    ).logits
    logits = torch.cat([out.logits[:, -1:].repeat_interleave(2, dim=0), answer_logits[:, :-1]], dim=1).float()
    token_logps = logits.gather(-1, ids[..., None])[..., 0] - logits.logsumexp(-1)
    counted = mask.float()
    return (token_logps * counted).sum(-1), counted.sum(-1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    nll_weight: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean sigmoid DPO loss of a batch from sequence log-probs (policy and reference); with
    ``nll_weight`` plus that weight × the NLL per chosen token of the batch (TRL's ``"sft"`` term)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    if nll_weight:
        if chosen_tokens is None:
            raise ValueError("nll_weight needs chosen_tokens")
        loss = loss - nll_weight * chosen.sum() / chosen_tokens.sum()
    return loss


@dataclass
class ProbeStats:
    """Work done by a `Prober`."""

    probe_steps: int = 0
    probe_seconds: float = 0.0


class LocalModel:
    """A copy of the model in this process, for engines that cannot train in place (inference servers):
    θ* and the probe steps train here, and θ*'s weights are hosted in the engine as an adapter."""

    def __init__(self, model: str, policy: str | None, policy_path: str | None) -> None:
        from transformers import AutoModelForCausalLM

        from dits.models import resolve_model

        ref = resolve_model(model)
        self.model: Any = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32)
        if policy is not None:
            if policy_path is None:
                raise DitsError("a local probe model needs the policy adapter's folder")
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, policy_path, adapter_name=policy)
        self.model.eval()

    def add_adapter(self, name: str, weights: AdapterWeights) -> None:
        self.model = weights.attach(self.model, name)


class Prober:
    """θ* (adapter ``name``), the reference log-probs of ``pairs``, probes.

    θ* trains in the engine's own model when it offers one (`Capabilities.trainable_model`: generation
    then sees every change at once); otherwise in a `LocalModel` built from ``local_model`` (the run's
    model) and ``policy_path``, and θ*'s weights are pushed to the engine as an adapter after every change.
    ``policy``: the hosted adapter θ* starts from and the frozen DPO reference (None: a fresh LoRA from
    ``lora``, against the bare base model). ``dpo`` gives the loss (``beta``, ``nll_weight``) and
    ``max_length``; ``pairs_per_batch`` pairs are scored per forward pass. Pairs whose prompt cannot
    fit are left out (`unfit`). Call `close` to remove θ* from the engine.
    """

    def __init__(
        self,
        engine: Engine,
        pairs: Sequence[PreferencePair],
        dpo: TrainConfig,
        *,
        policy: str | None,
        lora: LoraSettings | None = None,
        name: str = THETA,
        seed: int = 0,
        pairs_per_batch: int = 16,
        local_model: str | None = None,
        policy_path: str | None = None,
    ) -> None:
        require(engine, "adapters", "influence probes")
        if len({p.id for p in pairs}) != len(pairs):
            raise DitsError("influence probes need unique pair ids")
        self.engine, self.name, self.dpo, self.seed, self.policy = engine, name, dpo, seed, policy
        self.local: LocalModel | None = None
        if not engine.capabilities.trainable_model:
            if local_model is None:
                raise DitsError(
                    f"influence probes on engine {type(engine).__name__} (no model in this process) "
                    "need the model to train θ* locally (local_model)"
                )
            self.local = LocalModel(local_model, policy, policy_path)
        self.stats = ProbeStats()
        self.pairs: dict[str, TokenizedPair] = {}
        self.reference: dict[str, torch.Tensor] = {}
        self.unfit: list[str] = []
        self.chunk = max(1, pairs_per_batch)
        self._flags = {p: p.requires_grad for p in self.model.parameters()}  # restored by `close`
        self.config = self._create(policy, lora)
        self.params = {n: p for n, p in self.model.named_parameters() if f".{name}." in n}
        self.add_pairs(pairs)
        self.theta = self._snapshot()
        if self.local is not None:
            self._host()

    def add_pairs(self, pairs: Sequence[PreferencePair]) -> None:
        """Make ``pairs`` probe-able: tokenised, their reference log-probs computed (once per pair id;
        a pair whose id is known is skipped)."""
        fresh = [p for p in pairs if p.id not in self.pairs and p.id not in self.unfit]
        if len({p.id for p in fresh}) != len(fresh):
            raise DitsError("influence probes need unique pair ids")
        tokenized, unfit = tokenize_pairs(fresh, self.engine.tokenizer, self.dpo.max_length)
        self.unfit += unfit
        if not tokenized:
            return
        with torch.no_grad(), self._active(self.policy):
            self.reference.update(zip([p.id for p in tokenized], self._logps(tokenized), strict=True))
        self.pairs.update((p.id, p) for p in tokenized)

    @property
    def model(self) -> Any:
        """The model θ* trains in (re-read: adding the first adapter wraps it)."""
        return self.local.model if self.local is not None else self.engine.trainable_model()

    def _host(self) -> None:
        """Make the engine generate with θ*'s current weights."""
        if self.local is None:
            self.engine.weights_changed(self.name)
            return
        if self.name in self.engine.adapters():
            self.engine.remove_adapter(self.name)
        self.engine.add_adapter(self.name, AdapterWeights(self.config, self.state()))

    # ------------------------------------------------------------------ setup
    def _create(self, policy: str | None, lora: LoraSettings | None) -> Any:
        """Add θ* (a copy of the policy adapter, or a seeded fresh LoRA); dropout 0 for determinism."""
        if self.name in self.engine.adapters():
            raise DitsError(
                f"adapter {self.name!r} already exists: close the other Prober on this engine first"
            )
        if policy is not None:
            if policy not in self.engine.adapters():
                raise DitsError(f"policy adapter {policy!r} is not loaded in the engine")
            config = copy.deepcopy(self.model.peft_config[policy])
            state = {
                k: v.clone() for k, v in get_peft_model_state_dict(self.model, adapter_name=policy).items()
            }
        else:
            config, state = lora_config(lora or LoraSettings()), {}
        config.lora_dropout, config.inference_mode = 0.0, False
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(derive_seed(self.seed, "theta") % 2**31)
            (self.local or self.engine).add_adapter(self.name, AdapterWeights(config, state))
        return config

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        """Run the model under ``adapter`` (None: adapters disabled)."""
        if adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    @contextmanager
    def training(self) -> Iterator[None]:
        """θ* active and alone trainable, train mode with every dropout at 0; eval mode afterwards."""
        model = self.model
        model.set_adapter(self.name)
        trainable = set(self.params.values())
        for param in model.parameters():
            param.requires_grad_(param in trainable)
        dropouts = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        for module, _ in dropouts:
            module.p = 0.0
        model.train()
        try:
            yield
        finally:
            model.eval()
            for module, p in dropouts:
                module.p = p
            for param in trainable:
                param.grad = None

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    # ------------------------------------------------------------------ losses
    def _logps(self, pairs: Sequence[TokenizedPair]) -> list[torch.Tensor]:
        """Per pair ``[chosen, rejected, chosen tokens]`` under the active adapter (chunks of pairs)."""
        out = []
        for start in range(0, len(pairs), self.chunk):
            batch = pairs[start : start + self.chunk]
            logps, counts = pair_logps(self.model, batch, self.engine.tokenizer.pad_token_id)
            out += [torch.stack([logps[2 * i], logps[2 * i + 1], counts[2 * i]]) for i in range(len(batch))]
        return out

    def _loss(self, pair_ids: Sequence[str]) -> torch.Tensor:
        """DPO loss of ``pair_ids`` under the active adapter against the cached reference."""
        missing = [i for i in pair_ids if i not in self.pairs]
        if missing:
            raise DitsError(f"pairs {missing[:3]} are not in the probe pool (unknown or too long)")
        values = torch.stack(self._logps([self.pairs[i] for i in pair_ids]))
        ref = torch.stack([self.reference[i] for i in pair_ids]).to(values.device)
        return dpo_loss(
            values[:, 0],
            values[:, 1],
            ref[:, 0],
            ref[:, 1],
            beta=self.dpo.beta,
            nll_weight=self.dpo.nll_weight,
            chosen_tokens=values[:, 2],
        )

    @torch.no_grad()
    def loss(self, pair_ids: Sequence[str]) -> float:
        """DPO loss of ``pair_ids`` under θ*'s current weights (mean over pairs)."""
        self.model.set_adapter(self.name)
        return float(self._loss(list(pair_ids)))

    # ------------------------------------------------------------------ steps
    def _step(self, optimizer: torch.optim.Optimizer, pair_ids: Sequence[str]) -> float:
        loss = self._loss(pair_ids)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def warm_up(self, pair_ids: Sequence[str], steps: int, lr: float, batch_size: int) -> list[float]:
        """θ* ← ``steps`` AdamW steps (constant ``lr``, batches of ``batch_size``) over ``pair_ids``, in a
        seeded shuffled order (a new permutation each pass). Returns the loss of every step."""
        ids = list(pair_ids)
        if steps and not ids:
            raise DitsError("warm-up needs at least one pair")
        rng = np.random.default_rng(derive_seed(self.seed, "warmup") % 2**32)
        order: list[str] = []
        losses = []
        with self.training():
            optimizer = torch.optim.AdamW(list(self.params.values()), lr=lr, weight_decay=0.0)
            for _ in range(steps):
                while len(order) < batch_size:
                    order += [ids[i] for i in rng.permutation(len(ids))]
                batch, order = order[:batch_size], order[batch_size:]
                optimizer.zero_grad(set_to_none=True)
                losses.append(self._step(optimizer, batch))
        self.theta = self._snapshot()
        self._host()
        return losses

    @contextmanager
    def stepped(self, pair_ids: Sequence[str], lr: float, optimizer: Optimizer = "adam") -> Iterator[float]:
        """Inside the block θ* has taken one step on ``pair_ids`` (fresh AdamW or SGD at ``lr``); on exit it
        is restored bit for bit. Yields the pairs' loss at θ* (before the step)."""
        started = time.perf_counter()
        params = list(self.params.values())
        opt = (
            torch.optim.SGD(params, lr=lr)
            if optimizer == "sgd"
            else torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        )
        try:
            with self.training():
                loss = self._step(opt, pair_ids)
            del opt
            self.stats.probe_steps += 1
            self.stats.probe_seconds += time.perf_counter() - started
            yield loss
        finally:
            self.restore()

    @torch.no_grad()
    def set_theta(self, state: Mapping[str, torch.Tensor]) -> None:
        """Make θ* the adapter state ``state`` (a PEFT state dict, e.g. a saved warm-up)."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, dict(state), adapter_name=self.name)
        self.theta = self._snapshot()
        self._host()

    def reflect(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The adapter state on the other side of θ*: θ* − (state − θ*) (a central difference's minus side)."""
        here = self.state()
        return {k: 2 * here[k] - v for k, v in state.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put θ*'s weights back (exact copy)."""
        for name, param in self.params.items():
            param.copy_(self.theta[name])
            param.grad = None

    def state(self) -> dict[str, torch.Tensor]:
        """θ*'s current weights as a PEFT state dict (copies), ready for `Engine.add_adapter`."""
        return {
            k: v.detach().clone()
            for k, v in get_peft_model_state_dict(self.model, adapter_name=self.name).items()
        }

    def probe(
        self, pair_ids: Sequence[str], lr: float, optimizer: Optimizer = "adam"
    ) -> dict[str, torch.Tensor]:
        """The adapter state after one step from θ* on ``pair_ids`` (θ* itself is left unchanged)."""
        with self.stepped(pair_ids, lr, optimizer):
            return self.state()

    @torch.no_grad()
    def delta_dot(self, vector: Mapping[str, torch.Tensor]) -> float:
        """⟨vector, θ − θ*⟩ over θ*'s parameters (inside `stepped`: the step's first-order effect)."""
        return float(
            sum(
                ((p.detach() - self.theta[n]).double() * vector[n].double()).sum()
                for n, p in self.params.items()
            )
        )

    def gradient(
        self, sequences: Sequence[MaskedSequence], weights: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """∇ at θ* of Σ_i weights[i] · log p(masked tokens of sequence i) (one sequence per forward)."""
        grads = {n: torch.zeros_like(p) for n, p in self.params.items()}
        with self.training():
            for sequence, weight in zip(sequences, weights, strict=True):
                logps, _ = sequence_logps(self.model, [sequence], self.engine.tokenizer.pad_token_id)
                (weight * logps.sum()).backward()
                for name, param in self.params.items():
                    if param.grad is not None:
                        grads[name] += param.grad
                    param.grad = None
        return grads

    def close(self) -> None:
        """Remove θ* from the engine and give the other parameters back their ``requires_grad`` flags."""
        for param, flag in self._flags.items():
            param.requires_grad_(flag)
        if self.name in self.engine.adapters():
            self.engine.remove_adapter(self.name)
        self.local = None
