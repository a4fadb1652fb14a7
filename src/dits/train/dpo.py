"""Preference optimisation on tree-search pairs (TRL ``DPOTrainer``): sigmoid DPO, optionally + NLL.

Reference model = the model the stage starts from:

* ``model`` carries a LoRA adapter (e.g. the SFT stage's output): that adapter is trained further, and
  TRL 1.16 copies its starting weights into a frozen adapter named ``"ref"`` that serves as reference
  (only the trained ``"default"`` adapter is saved);
* ``model`` is a plain model: a fresh LoRA adapter whose reference is the adapter-disabled model
  (TRL's ``peft_config`` path), or with ``cfg.lora=False`` full fine-tuning against a frozen copy.

``cfg.nll_weight > 0`` adds the NLL of the chosen answer (Optima's iDPO "RPO", ``rpo_alpha`` in old TRL):
``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, nll_weight]``. Prompts longer than ``max_length``
are trimmed by `dits.train.records.fit_dpo_rows` before TRL sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from dits.config import TrainConfig
from dits.errors import DitsError
from dits.models import ModelRef
from dits.train.common import (
    TrainResult,
    as_ref,
    load_model,
    load_tokenizer,
    peft_config_for,
    train_and_save,
    trainer_args,
)
from dits.train.records import fit_dpo_rows


def loss_settings(cfg: TrainConfig) -> dict[str, Any]:
    """DPOConfig loss fields: sigmoid DPO with ``cfg.beta``, plus NLL on chosen if ``cfg.nll_weight > 0``."""
    if cfg.nll_weight > 0:
        return {"beta": cfg.beta, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.nll_weight]}
    return {"beta": cfg.beta, "loss_type": ["sigmoid"]}


def train_dpo(
    model: str | ModelRef,
    rows: Sequence[dict[str, Any]],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    seed: int,
    stage: str | None = None,
) -> TrainResult:
    """DPO-train ``model`` on conversational preference ``rows`` (`dits.train.records.dpo_rows`);
    ``stage`` names the run's stage in errors."""
    ref = as_ref(model)
    tokenizer = load_tokenizer(ref)
    fitted, _ = fit_dpo_rows(rows, tokenizer, cfg.max_length)
    if not fitted:
        raise DitsError(f"no DPO pair fits train max_length={cfg.max_length}; raise it")

    def make_trainer(work: Path) -> DPOTrainer:
        reference = None if cfg.lora else load_model(ref, lora=False)
        return DPOTrainer(
            model=load_model(ref, lora=cfg.lora),
            ref_model=reference,
            args=trainer_args(DPOConfig, cfg, work, seed, **loss_settings(cfg)),
            train_dataset=Dataset.from_list(fitted),
            processing_class=tokenizer,
            peft_config=peft_config_for(ref, cfg),
        )

    return train_and_save(
        make_trainer,
        name="DPO",
        base=ref.base,
        tokenizer=tokenizer,
        out_dir=out_dir,
        seed=seed,
        rows=len(rows),
        stage=stage,
    )
