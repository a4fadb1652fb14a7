"""The probe primitive on tiny-random: TRL-equal DPO loss, cached reference, θ*, one step, exact restore."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from dits.config import LoraSettings, TrainConfig
from dits.engines.base import AdapterWeights
from dits.engines.hf import HFEngine
from dits.errors import DitsError
from dits.influence.probe import (
    MaskedSequence,
    Prober,
    dpo_loss,
    pair_logps,
    sequence_logps,
    tokenize_pairs,
)
from dits.models import resolve_model
from dits.search.pairs import PreferencePair
from dits.train.common import load_model, load_tokenizer, trainer_args
from dits.train.dpo import loss_settings
from dits.train.records import chat_ids, dpo_rows, fit_dpo_rows
from test_influence_support import DPO, POLICY, make_engine, make_pairs

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
GROUP = ["train-0/0", "train-1/1"]


@pytest.fixture(scope="module")
def engine(tiny_model: str) -> HFEngine:
    return make_engine(tiny_model)


@pytest.fixture
def prober(engine: HFEngine) -> Iterator[Prober]:
    prober = Prober(engine, make_pairs(), DPO, policy=POLICY, seed=0)
    yield prober
    prober.close()


def optimizers() -> int:
    gc.collect()
    return sum(issubclass(type(o), torch.optim.Optimizer) for o in gc.get_objects())


def pair_sequences(pairs: list, tokenizer) -> list[MaskedSequence]:
    tokenized, _ = tokenize_pairs(pairs, tokenizer, DPO.max_length)
    return [s for p in tokenized for s in (p.chosen, p.rejected)]


# ------------------------------------------------------------------------------------ loss and tokens
def test_pairs_are_tokenised_like_trl_and_unfit_prompts_are_reported(engine: HFEngine) -> None:
    tokenizer = engine.tokenizer
    (pair,) = make_pairs(1, 1)
    system = {"role": "system", "content": "word " * 300}
    long = PreferencePair(
        "long", "t", 0, "q", "alice", [system], "yes", "no", 1.0, 0.0, {"context_messages": 1}
    )
    kept, unfit = tokenize_pairs([pair, long], tokenizer, 200)
    assert unfit == ["long"] and [p.id for p in kept] == [pair.id]
    prompt = chat_ids(tokenizer, pair.prompt, generation_prompt=True)
    full = chat_ids(tokenizer, pair.prompt + [{"role": "assistant", "content": pair.chosen}])
    assert kept[0].chosen == MaskedSequence(full, [0] * len(prompt) + [1] * (len(full) - len(prompt)))
    assert pair.chosen in tokenizer.decode(full[len(prompt) :])
    assert tokenize_pairs([pair], tokenizer, len(prompt) + 2)[0][0].rejected.mask.count(1) == 2  # cut


def test_sequence_logps_do_not_depend_on_padding(engine: HFEngine) -> None:
    sequences = pair_sequences(make_pairs(2, 2), engine.tokenizer)
    pad = engine.tokenizer.pad_token_id
    with torch.no_grad():
        together, counts = sequence_logps(engine.model, sequences, pad)
        alone = [sequence_logps(engine.model, [s], pad) for s in sequences]
    assert torch.allclose(together, torch.cat([a for a, _ in alone]), atol=1e-4)
    assert counts.tolist() == [sum(s.mask) for s in sequences]
    assert len({round(v, 3) for v in together.tolist()}) == len(sequences)


def test_pair_logps_equal_whole_sequence_logps_with_their_gradients(engine: HFEngine, prober: Prober) -> None:
    """The shared-prompt pass gives the values and the gradients of scoring both sides whole, with
    prompts of different lengths in one batch and answers that share their first tokens."""
    pairs, _ = tokenize_pairs(make_pairs(2, 2), engine.tokenizer, DPO.max_length)
    short = PreferencePair(
        "short", "t", 0, "q", "alice", [{"role": "user", "content": "hi"}], "a b", "a c", 1, 0
    )
    pairs += tokenize_pairs([short], engine.tokenizer, DPO.max_length)[0]
    pad = engine.tokenizer.pad_token_id
    prober.warm_up([p.id for p in make_pairs()], 2, 1e-2, 2)  # θ* ≠ the reference: non-trivial LoRA B
    sequences = [s for p in pairs for s in (p.chosen, p.rejected)]
    grads = []
    with prober.training():
        for scorer, items in ((pair_logps, pairs), (sequence_logps, sequences)):
            logps, counts = scorer(prober.model, items, pad)
            (logps * torch.linspace(0.5, 1.5, len(logps))).sum().backward()
            grads.append({n: p.grad.clone() for n, p in prober.params.items()})
            for p in prober.params.values():
                p.grad = None
            if scorer is pair_logps:
                shared = (logps.detach(), counts)
    assert torch.allclose(shared[0], logps.detach(), atol=1e-4)
    assert shared[1].tolist() == counts.tolist() == [sum(s.mask[1:]) for s in sequences]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-3) for n in grads[0])
    assert any(grads[0][n].abs().sum() > 0 for n in grads[0])


def test_dpo_loss_equals_trls_on_the_same_batch(tiny_model: str, tmp_path) -> None:
    """Sigmoid DPO + 0.5 · NLL on chosen (TRL ``loss_type=["sigmoid", "sft"]``), policy ≠ reference."""
    nll_weight = 0.5
    base = resolve_model(tiny_model)
    tokenizer = load_tokenizer(base)
    pairs = make_pairs(2, 2)
    cfg = TrainConfig(
        beta=0.3, nll_weight=nll_weight, max_length=256, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0
    )
    policy, reference = load_model(base, lora=False), load_model(base, lora=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    sequences = pair_sequences(pairs, tokenizer)
    with torch.no_grad():
        logps, counts = sequence_logps(policy, sequences, tokenizer.pad_token_id)
        ref, _ = sequence_logps(reference, sequences, tokenizer.pad_token_id)
    ours = dpo_loss(
        logps[0::2],
        logps[1::2],
        ref[0::2],
        ref[1::2],
        beta=cfg.beta,
        nll_weight=nll_weight,
        chosen_tokens=counts[0::2],
    )
    assert abs(float(ours) - math.log(2) - nll_weight * float(-logps[0::2].sum() / counts[0::2].sum())) > 1e-3
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=trainer_args(DPOConfig, cfg, tmp_path, 0, max_steps=1, **loss_settings(cfg)),
        train_dataset=Dataset.from_list(fit_dpo_rows(dpo_rows(pairs), tokenizer, cfg.max_length)[0]),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(float(ours), rel=1e-4)


# ------------------------------------------------------------------------------------ θ* and probes
def test_reference_log_probs_are_computed_once(engine: HFEngine) -> None:
    calls: list[str] = []
    hook = engine.model.register_forward_pre_hook(lambda module, args: calls.append(module.active_adapter))
    try:
        prober = Prober(engine, make_pairs(), DPO, policy=POLICY, seed=0)
        assert calls == [POLICY] * 2  # 8 pairs, one chunk of 8 pairs: a prompt pass, an answer pass
        with pytest.raises(DitsError, match="already exists"):
            Prober(engine, make_pairs(), DPO, policy=POLICY)  # one θ* per engine
        assert prober.loss(GROUP) == pytest.approx(math.log(2), abs=1e-6)  # θ* = SFT = reference
        prober.warm_up([p.id for p in make_pairs()], 3, 1e-2, 2)
        calls.clear()
        prober.probe(GROUP, 1e-2)
        prober.probe(GROUP, 1e-2, "sgd")
        assert calls == [prober.name] * 4  # one prompt and one answer pass per probe, none for the reference
        prober.close()
    finally:
        hook.remove()


def test_warm_up_trains_theta_deterministically_and_leaves_the_sft_adapter(engine: HFEngine) -> None:
    ids = [p.id for p in make_pairs()]
    sft_before = {n: p.detach().clone() for n, p in engine.model.named_parameters() if f".{POLICY}." in n}
    flags = {n: p.requires_grad for n, p in engine.model.named_parameters()}
    thetas, losses = [], []
    for _ in range(2):
        prober = Prober(engine, make_pairs(), DPO, policy=POLICY, seed=3)
        losses.append(prober.warm_up(ids, 4, 2e-2, 2))
        thetas.append(prober.state())
        prober.close()
    assert losses[0] == losses[1] and losses[0][0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[0][-1] < math.log(2)
    assert all(torch.equal(thetas[0][k], thetas[1][k]) for k in thetas[0])
    sft_after = {n: p for n, p in engine.model.named_parameters() if f".{POLICY}." in n}
    assert all(torch.equal(sft_before[n], sft_after[n]) for n in sft_before)
    assert engine.adapters() == [POLICY]
    assert {n: p.requires_grad for n, p in engine.model.named_parameters()} == flags


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_probe_restores_theta_bit_for_bit(prober: Prober, optimizer: str) -> None:
    prober.warm_up([p.id for p in make_pairs()], 2, 1e-2, 2)
    model = prober.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theta, count = prober.state(), optimizers()
    state = prober.probe(GROUP, 0.05, optimizer)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) and optimizers() == count
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(prober.params)
    assert not model.training
    assert state.keys() == theta.keys() and all(not torch.equal(state[k], theta[k]) for k in state)
    again = prober.probe(GROUP, 0.05, optimizer)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_adam_probe_is_a_sign_step_and_sgd_follows_the_gradient(prober: Prober) -> None:
    lr = 1e-3
    before = prober.loss(GROUP)
    with prober.stepped(GROUP, lr, "adam") as loss:
        moved = torch.cat([(p.detach() - prober.theta[n]).flatten() for n, p in prober.params.items()])
        adam_after = prober.loss(GROUP)
    assert loss == pytest.approx(before, abs=1e-6)
    # fresh AdamW: every weight moves by ≈ ±lr (less only where |gradient| is near Adam's eps)
    assert moved.abs().max() <= lr * (1 + 1e-5) and (moved.abs() > 0.99 * lr).float().mean() > 0.99
    with prober.stepped(GROUP, lr, "sgd"):
        sgd_after = prober.loss(GROUP)
    assert adam_after < before and sgd_after < before
    assert prober.loss(GROUP) == before


def test_a_probe_state_registers_as_the_stepped_adapter(engine: HFEngine, prober: Prober) -> None:
    with prober.stepped(GROUP, 0.05):
        stepped = {n: p.detach().clone() for n, p in prober.params.items()}
        state = prober.state()
    engine.add_adapter("probe_x", AdapterWeights(prober.config, state))
    registered = {
        n.replace(".probe_x.", f".{prober.name}."): p
        for n, p in engine.model.named_parameters()
        if ".probe_x." in n
    }
    engine.remove_adapter("probe_x")
    assert registered.keys() == stepped.keys()
    assert all(torch.equal(registered[n], stepped[n]) for n in stepped)


def test_gradient_and_delta_dot_predict_a_small_step(prober: Prober) -> None:
    sequences = pair_sequences(make_pairs(1, 2), prober.engine.tokenizer)
    weights = [0.7, 0.2, 0.5, 0.1]
    grad = prober.gradient(sequences, weights)
    pad = prober.engine.tokenizer.pad_token_id

    def objective() -> float:
        prober.model.set_adapter(prober.name)
        with torch.no_grad():
            logps, _ = sequence_logps(prober.model, sequences, pad)
        return float((logps * torch.tensor(weights)).sum())

    start = objective()
    with prober.stepped(GROUP, 1e-4, "sgd"):
        predicted, actual = prober.delta_dot(grad), objective() - start
    assert predicted != 0 and actual == pytest.approx(predicted, rel=0.05)


def test_without_policy_theta_is_a_fresh_lora_against_the_bare_base(tiny_model: str) -> None:
    engine = HFEngine(tiny_model, batch_size=8)
    lora = LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    prober = Prober(engine, make_pairs(2, 1), DPO, policy=None, lora=lora, seed=0)
    ids = list(prober.pairs)
    assert prober.loss(ids) == pytest.approx(math.log(2), abs=1e-6)  # B = 0: θ* equals the base
    state = prober.probe(ids, 1e-2)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)
    prober.close()
    assert engine.adapters() == []
