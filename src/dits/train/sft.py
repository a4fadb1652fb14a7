"""Supervised fine-tuning on the best dialogues (TRL ``SFTTrainer``), LoRA by default.

Rows are `dits.train.records.sft_rows` (one per agent view); they are tokenised here with the model's
tokenizer into ``input_ids`` + ``completion_mask`` so the loss covers only the agent's own turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from dits.config import TrainConfig
from dits.errors import DitsError
from dits.models import ModelRef, resolve_model
from dits.train.common import (
    TrainResult,
    as_ref,
    load_model,
    load_tokenizer,
    peft_config_for,
    train_and_save,
    trainer_args,
)
from dits.train.records import tokenize_sft_rows


def train_sft(
    model: str | ModelRef,
    rows: Sequence[dict[str, Any]],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    seed: int,
    init_adapter: Path | None = None,
    stage: str | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``rows`` and save the result (adapter or full model) to ``out_dir``.

    With ``init_adapter`` (a LoRA folder on the same base) that adapter is trained further; so is the
    adapter of ``model`` itself if it has one. Otherwise LoRA adds a fresh adapter (``cfg.lora``) or
    the whole model is trained. ``stage`` names the run's stage in errors.
    """
    ref = as_ref(model)
    if init_adapter is not None:
        start = resolve_model(str(init_adapter))
        if start.adapter is None or start.base != ref.base:
            raise DitsError(f"init_adapter {init_adapter} is not a LoRA adapter of {ref.base}")
        ref = start
    tokenizer = load_tokenizer(ref)
    tokenized, _ = tokenize_sft_rows(rows, tokenizer, cfg.max_length)
    if not tokenized:
        raise DitsError(f"no SFT row fits train max_length={cfg.max_length}; raise it")

    def make_trainer(work: Path) -> SFTTrainer:
        return SFTTrainer(
            model=load_model(ref, lora=cfg.lora),
            args=trainer_args(SFTConfig, cfg, work, seed, completion_only_loss=True),
            train_dataset=Dataset.from_list(tokenized),
            processing_class=tokenizer,
            peft_config=peft_config_for(ref, cfg),
        )

    return train_and_save(
        make_trainer,
        name="SFT",
        base=ref.base,
        tokenizer=tokenizer,
        out_dir=out_dir,
        seed=seed,
        rows=len(rows),
        stage=stage,
    )
