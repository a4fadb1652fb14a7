"""SFT and DPO stages on the tiny random model: real optimisation, references, outputs, determinism."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file
from trl import DPOConfig, DPOTrainer, SFTTrainer

from dits.config import TrainConfig
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.hf import HFEngine
from dits.errors import DitsError
from dits.mas.dialogue import Dialogue
from dits.mas.render import agent_view
from dits.models import ModelRef, resolve_model
from dits.search.pairs import PreferencePair
from dits.train import dpo, sft
from dits.train.common import LOG_FILE, RESULT_FILE, load_model, load_tokenizer, trainer_args
from dits.train.records import chat_ids, dpo_rows, fit_dpo_rows, sft_rows, tokenize_sft_rows
from train_support import INSTANCE, TURNS

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CFG = TrainConfig(learning_rate=1e-2, epochs=2, batch_size=8, warmup_ratio=0.0, lr_scheduler="constant")
SYSTEM = {"role": "system", "content": "You are Alice. End with <A>answer</A>."}
LONG = [
    {"role": role, "content": f"note {i}: " + "more words " * 25}
    for i, role in enumerate(["assistant", "user"] * 2)
]


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def capture(module: Any) -> Iterator[dict[str, Any]]:
    """Record the trainer a stage builds and its trainable parameters before training."""
    seen: dict[str, Any] = {}
    original = module.train_and_save

    def wrapper(make_trainer, **kwargs):
        def make(work: Path):
            trainer = make_trainer(work)
            seen["trainer"] = trainer
            seen["initial"] = {
                n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
            }
            return trainer

        return original(make, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "train_and_save", wrapper)
        yield seen


def assert_every_trainable_param_changed(seen: dict[str, Any]) -> None:
    final = {n: p.detach() for n, p in seen["trainer"].model.named_parameters() if p.requires_grad}
    assert final and final.keys() == seen["initial"].keys()
    assert [n for n, p in final.items() if torch.equal(p, seen["initial"][n])] == []


def policy(model: str | ModelRef) -> Any:
    ref = resolve_model(model) if isinstance(model, str) else model
    return load_model(ref, lora=True).eval()


@torch.no_grad()
def next_token_logps(model: Any, sequences: list[list[int]]) -> list[torch.Tensor]:
    """For each sequence, log p(ids[t] | ids[:t]) for t = 1..n-1 (one right-padded batch)."""
    width = max(len(ids) for ids in sequences)
    ids = torch.tensor([seq + [0] * (width - len(seq)) for seq in sequences])
    attention = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in sequences])
    logps = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits[:, :-1].float(), -1)
    token_logps = logps.gather(-1, ids[:, 1:, None])[..., 0]
    return [row[: len(seq) - 1] for row, seq in zip(token_logps, sequences, strict=True)]


def sft_loss(model: Any, tokenized: list[dict[str, list[int]]]) -> float:
    """Mean NLL over the masked tokens of the batch (TRL's SFT loss on one full batch)."""
    logps = next_token_logps(model, [row["input_ids"] for row in tokenized])
    masks = [torch.tensor(row["completion_mask"][1:], dtype=torch.bool) for row in tokenized]
    return -float(torch.cat([lp[mask] for lp, mask in zip(logps, masks, strict=True)]).mean())


def completion_logps(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    """Per-token log-probs of each row's chosen and rejected completion, tokenised as TRL does."""
    starts = [len(chat_ids(tokenizer, row["prompt"], generation_prompt=True)) - 1 for row in rows]
    sides = ("chosen", "rejected")
    logps = next_token_logps(
        model, [chat_ids(tokenizer, row["prompt"] + row[side]) for row in rows for side in sides]
    )
    return [
        {side: logps[2 * i + j][start:] for j, side in enumerate(sides)} for i, start in enumerate(starts)
    ]


def dpo_loss(
    policy_logps: list[dict[str, torch.Tensor]], reference_logps: list[dict[str, torch.Tensor]], beta: float
) -> float:
    """Mean sigmoid DPO loss of a policy against a reference, from their completion log-probs."""
    losses = []
    for pol, ref in zip(policy_logps, reference_logps, strict=True):
        margin = (pol["chosen"].sum() - ref["chosen"].sum()) - (pol["rejected"].sum() - ref["rejected"].sum())
        losses.append(-F.logsigmoid(beta * margin).item())
    return sum(losses) / len(losses)


def chosen_nll(logps: list[dict[str, torch.Tensor]]) -> float:
    """Mean NLL per chosen token over the batch (TRL's "sft" loss term)."""
    return -float(torch.cat([row["chosen"] for row in logps]).mean())


def generates(folder: Path) -> None:
    engine = HFEngine(str(folder), batch_size=2)
    request = GenerationRequest(agent_view(INSTANCE, "alice", []))
    ((completion,),) = engine.generate([request], SamplingParams(max_new_tokens=4))
    assert 0 < completion.num_tokens <= 4


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base() -> ModelRef:
    return resolve_model("tiny-random")


@pytest.fixture(scope="module")
def tokenizer(base: ModelRef) -> Any:
    return load_tokenizer(base)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    """Alice's and Bob's views (no demonstration, to keep the sequences short)."""
    return sft_rows(Dialogue("q1", TURNS), INSTANCE, demonstrate=False)


@pytest.fixture(scope="module")
def pairs_rows() -> list[dict[str, Any]]:
    """Four short pairs; two carry long histories that only fit ``max_length`` once trimmed."""

    def pair(history: list[dict[str, str]], chosen: str, rejected: str) -> PreferencePair:
        prompt = [SYSTEM, {"role": "user", "content": "Who directed Film X?"}, *history]
        return PreferencePair(
            "p",
            "t",
            0,
            "q1",
            "alice",
            prompt,
            chosen,
            rejected,
            1.0,
            0.0,
            {"depth": len(history), "context_messages": 2},
        )

    return dpo_rows(
        [
            pair([], "Film X: dir. Ann Lee. <A>Ann Lee</A>", "Hello! How are you today?"),
            pair([], "<A>Ann Lee</A>", "No idea, sorry."),
            pair(LONG, "<A>Ann Lee</A>", "Let me think about it more."),
            pair(LONG[:2], "Ann Lee. <A>Ann Lee</A>", "I cannot tell."),
        ]
    )


@pytest.fixture(scope="module")
def dpo_max_length(tokenizer: Any, pairs_rows: list[dict[str, Any]]) -> int:
    """Long enough for every trimmed pair, too short for the untrimmed long ones."""
    fitted = [
        len(chat_ids(tokenizer, r["prompt"][: r["context_messages"]] + r["chosen"])) for r in pairs_rows
    ]
    untrimmed = [len(chat_ids(tokenizer, r["prompt"], generation_prompt=True)) for r in pairs_rows[2:]]
    assert max(fitted) + 16 < min(untrimmed)
    return max(fitted) + 16


@pytest.fixture(scope="module")
def sft_run(
    tmp_path_factory: pytest.TempPathFactory, base: ModelRef, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    with capture(sft) as seen:
        seen["result"] = sft.train_sft(base, rows, CFG, tmp_path_factory.mktemp("sft") / "out", seed=0)
    return seen


# ------------------------------------------------------------------------------------------ SFT
def test_sft_lora_trains_every_adapter_weight_on_own_turns_and_lowers_loss(sft_run, base, tokenizer, rows):
    result, trainer = sft_run["result"], sft_run["trainer"]
    assert_every_trainable_param_changed(sft_run)
    assert all(".lora_" in name for name in sft_run["initial"])
    tokenized, _ = tokenize_sft_rows(rows, tokenizer, CFG.max_length)
    # TRL trains exactly our own-turn mask (it ignores completion_mask unless completion_only_loss=True)
    assert trainer.train_dataset["labels"] == [
        [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]
        for r in tokenized
    ]
    before, after = sft_loss(policy(base), tokenized), sft_loss(policy(str(result.output)), tokenized)
    assert result.losses[0] == pytest.approx(before, rel=1e-4)
    assert after < before - 0.1
    assert (result.examples, result.dropped, result.steps, len(result.losses)) == (2, 0, 2, 2)


def test_sft_output_is_an_atomic_loadable_adapter_folder(sft_run, base):
    result = sft_run["result"]
    out = result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base.base
    assert resolve_model(str(out)) == ModelRef(base.base, out)
    assert (out / "tokenizer.json").exists() and not (out / "config.json").exists()
    assert json.loads((out / RESULT_FILE).read_text()) == json.loads(json.dumps(result.to_dict()))
    assert result.to_dict()["output"] == "out"  # nothing machine-specific in the saved result
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no work folders left behind
    generates(out)


def test_training_shows_one_bar_and_logs_every_step_to_the_stage_folder(base, rows, tmp_path, capfd):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = sft.train_sft(base, rows, CFG, tmp_path / "sft", seed=0)
    printed = "".join(capfd.readouterr())
    assert "'loss'" not in printed and "grad_norm" not in printed  # no per-step dicts
    assert "SFT training" in printed and f"{result.steps}/{result.steps}" in printed and "loss " in printed
    assert [str(w.message) for w in seen if "is_gradient_checkpointing" in str(w.message)] == []
    records = [json.loads(line) for line in (result.output / LOG_FILE).read_text().splitlines()]
    assert records == [h for h in result.history if "train_runtime" not in h]  # timings stay in the result
    assert [r["step"] for r in records if "loss" in r] == list(range(1, result.steps + 1)) == [1, 2]


def test_sft_same_seed_gives_identical_adapter(sft_run, base, rows, tmp_path):
    again = sft.train_sft(base, rows, CFG, tmp_path / "again", seed=0)
    first, second = adapter_weights(sft_run["result"].output), adapter_weights(again.output)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.losses == sft_run["result"].losses


def test_sft_continues_an_initial_adapter(sft_run, base, tokenizer, rows, tmp_path):
    start = sft_run["result"].output
    cfg = CFG.model_copy(update={"epochs": 1.0})
    result = sft.train_sft(base, rows, cfg, tmp_path / "next", seed=1, init_adapter=start)
    tokenized, _ = tokenize_sft_rows(rows, tokenizer, CFG.max_length)
    assert result.losses[0] == pytest.approx(sft_loss(policy(str(start)), tokenized), rel=1e-4)
    assert result.losses[0] < sft_loss(policy(base), tokenized) - 0.1
    assert (
        json.loads((result.output / "adapter_config.json").read_text())["base_model_name_or_path"]
        == base.base
    )


def test_sft_full_finetuning_changes_the_model(base, tokenizer, rows, tmp_path):
    cfg = CFG.model_copy(update={"lora": False, "learning_rate": 1e-3, "epochs": 1.0})
    with capture(sft) as seen:
        result = sft.train_sft(base, rows, cfg, tmp_path / "full", seed=0)
    assert_every_trainable_param_changed(seen)
    assert (result.output / "config.json").exists() and not (result.output / "adapter_config.json").exists()
    tokenized, _ = tokenize_sft_rows(rows, tokenizer, cfg.max_length)
    assert sft_loss(policy(str(result.output)), tokenized) < sft_loss(policy(base), tokenized) - 0.1
    generates(result.output)


# ------------------------------------------------------------------------------------------ DPO
def test_trl_drops_untrimmed_long_prompts_but_keeps_fitted_rows(
    base, tokenizer, pairs_rows, dpo_max_length, tmp_path
):
    def kept(rows: list[dict[str, Any]]) -> int:
        args = trainer_args(DPOConfig, CFG.model_copy(update={"max_length": dpo_max_length}), tmp_path, 0)
        trainer = DPOTrainer(
            model=load_model(base, lora=False),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        return len(trainer.train_dataset)

    raw = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs_rows]
    assert kept(raw) == 2  # TRL silently loses the two long histories
    fitted, dropped = fit_dpo_rows(pairs_rows, tokenizer, dpo_max_length)
    assert dropped == 0 and kept(fitted) == 4


def test_dpo_fresh_lora_uses_the_base_as_reference_and_learns(
    base, tokenizer, pairs_rows, dpo_max_length, tmp_path
):
    cfg = CFG.model_copy(update={"max_length": dpo_max_length})
    with capture(dpo) as seen:
        result = dpo.train_dpo(base, pairs_rows, cfg, tmp_path / "dpo", seed=0)
    assert_every_trainable_param_changed(seen)
    assert (result.examples, result.dropped, result.steps) == (4, 0, 2)  # long pairs trimmed, not lost
    assert result.history[0]["rewards/margins"] == 0.0
    assert result.losses[0] == pytest.approx(math.log(2), rel=1e-5)
    fitted, _ = fit_dpo_rows(pairs_rows, tokenizer, dpo_max_length)
    trained = completion_logps(policy(str(result.output)), tokenizer, fitted)
    assert dpo_loss(trained, completion_logps(policy(base), tokenizer, fitted), cfg.beta) < math.log(2) - 0.01
    config = json.loads((result.output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base.base


def test_dpo_continues_the_sft_adapter_with_it_as_reference(
    sft_run, base, tokenizer, pairs_rows, dpo_max_length, tmp_path
):
    start = sft_run["result"].output
    # one step: a trained adapter (B != 0) moves every weight at once
    cfg = CFG.model_copy(update={"max_length": dpo_max_length, "nll_weight": 0.5, "epochs": 1.0})
    fitted, _ = fit_dpo_rows(pairs_rows, tokenizer, dpo_max_length)
    sft_lp = completion_logps(policy(str(start)), tokenizer, fitted)
    # against the bare base the SFT adapter has non-zero rewards, so a zero start proves the reference
    base_lp = completion_logps(policy(base), tokenizer, fitted)
    assert abs(dpo_loss(sft_lp, base_lp, cfg.beta) - math.log(2)) > 1e-3
    with capture(dpo) as seen:
        result = dpo.train_dpo(str(start), pairs_rows, cfg, tmp_path / "dpo", seed=0)
    assert_every_trainable_param_changed(seen)
    assert all(".default." in name for name in seen["initial"])  # TRL's frozen "ref" copy is not trained
    first = result.history[0]
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0
    before = math.log(2) + 0.5 * chosen_nll(sft_lp)  # DPO + NLL on the chosen answer (RPO)
    assert result.losses[0] == pytest.approx(before, rel=1e-4)
    trained_lp = completion_logps(policy(str(result.output)), tokenizer, fitted)
    assert dpo_loss(trained_lp, sft_lp, cfg.beta) + 0.5 * chosen_nll(trained_lp) < before - 0.01
    assert [p.name for p in result.output.iterdir() if p.is_dir()] == []  # only the trained adapter
    assert resolve_model(str(result.output)).base == base.base
    generates(result.output)


def test_dpo_full_finetuning_uses_a_frozen_copy_as_reference(base, pairs_rows, dpo_max_length, tmp_path):
    cfg = CFG.model_copy(
        update={"lora": False, "learning_rate": 1e-3, "epochs": 1.0, "max_length": dpo_max_length}
    )
    with capture(dpo) as seen:
        result = dpo.train_dpo(base, pairs_rows, cfg, tmp_path / "full", seed=0)
    assert_every_trainable_param_changed(seen)
    assert seen["trainer"].ref_model is not None
    assert result.losses == [pytest.approx(math.log(2), rel=1e-5)]
    assert (result.output / "config.json").exists()


# ------------------------------------------------------------------------------------------ failures
def test_rows_that_cannot_fit_fail_with_a_clear_error(base, rows, pairs_rows, tmp_path):
    tiny = CFG.model_copy(update={"max_length": 16})
    with pytest.raises(DitsError, match="max_length=16"):
        sft.train_sft(base, rows, tiny, tmp_path / "sft", seed=0)
    with pytest.raises(DitsError, match="max_length=16"):
        dpo.train_dpo(base, pairs_rows, tiny, tmp_path / "dpo", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_a_crash_never_leaves_a_finished_looking_folder(base, rows, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier finished result")

    def crash(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(SFTTrainer, "train", crash)
    with pytest.raises(RuntimeError, match="killed"):
        sft.train_sft(base, rows, CFG, out, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]  # no work folder left
    assert [p.name for p in out.iterdir()] == ["previous.txt"]  # the earlier result is untouched
