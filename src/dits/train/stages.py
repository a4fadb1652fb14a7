"""The training stages of a run: SFT on the best sampled dialogues, DPO on preference pairs.

Outputs: ``iter_K/sft/`` and ``iter_K/dpo/`` (HF folders: a PEFT LoRA adapter pointing at the base
model, or a full model with ``lora: false``), each with ``train_result.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dits.config import TrainConfig
from dits.context import Policy, StageContext
from dits.errors import DitsError
from dits.isft import select_sft_dialogues
from dits.models import ModelRef
from dits.search.pairs import PreferencePair
from dits.train.launch import Kind, train
from dits.train.records import dpo_rows, sft_rows

if TYPE_CHECKING:
    from dits.train.common import TrainResult


def sft_stage(
    ctx: StageContext, iteration: str, records: Sequence[dict[str, Any]], policy: Policy | None
) -> Policy:
    """Stage ``ITER/sft``: SFT on the best sampled dialogues (`dits.isft.select_sft_dialogues`), from the
    initial model (``loop.sft_from_initial``) or continuing ``policy``. Returns the trained policy."""
    trained = ctx.policy(iteration, "sft")
    cfg = ctx.cfg

    def work() -> dict[str, Any]:
        chosen = select_sft_dialogues(records, cfg.isft)
        if not chosen:
            raise DitsError(
                f"{iteration}: no sampled dialogue reached isft.min_reward={cfg.isft.min_reward}; "
                "lower isft.min_reward or sample more (isft.samples_per_task)"
            )
        rows = [r for inst, d, _ in chosen for r in sft_rows(d, inst, demonstrate=cfg.dialogue.demonstration)]
        init = None if cfg.loop.sft_from_initial or policy is None else policy.path
        seed = ctx.train_seed(iteration, "sft")
        result = _train(
            ctx, "sft", ctx.model_ref(None), rows, cfg.sft, trained, seed, f"{iteration}/sft", init
        )
        return {
            "tasks_kept": len(chosen),
            "rows": len(rows),
            "steps": result.steps,
            "final_loss": result.losses[-1] if result.losses else None,
            "output": ctx.store.relative(trained.path),
        }

    ctx.stage(f"{iteration}/sft", work, outputs=[trained.path])
    return trained


def dpo_stage(
    ctx: StageContext, iteration: str, start: Policy | None, pairs: Sequence[PreferencePair]
) -> Policy:
    """Stage ``ITER/dpo``: DPO from ``start`` (which is also the frozen reference) on ``pairs``.
    Returns the trained policy."""
    trained = ctx.policy(iteration, "dpo")

    def work() -> dict[str, Any]:
        if not pairs:
            raise DitsError(
                f"{iteration}: the search produced no preference pair that passed the prefilters; lower "
                "pairs.min_chosen_value / pairs.min_gap or search more tasks"
            )
        seed = ctx.replica_seed(iteration, "dpo") % 2**31
        result = _train(
            ctx, "dpo", ctx.model_ref(start), dpo_rows(pairs), ctx.cfg.dpo, trained, seed, f"{iteration}/dpo"
        )
        return {
            "pairs": len(pairs),
            "steps": result.steps,
            "dropped": result.dropped,
            "final_loss": result.losses[-1] if result.losses else None,
            "output": ctx.store.relative(trained.path),
        }

    ctx.stage(f"{iteration}/dpo", work, outputs=[trained.path])
    return trained


def _train(
    ctx: StageContext,
    kind: Kind,
    model: ModelRef,
    rows: list[dict[str, Any]],
    cfg: TrainConfig,
    trained: Policy,
    seed: int,
    stage: str,
    init: Path | None = None,
) -> TrainResult:
    """Train ``trained`` with the run's launcher; under ``accelerate`` the Ray workers are stopped first
    (the training processes need the devices they hold; the next inference stage starts new ones)."""
    if ctx.cfg.distributed.train_launcher == "accelerate":
        ctx.stop_workers()
    return train(
        kind,
        model,
        rows,
        cfg,
        trained.path,
        seed=seed,
        dist=ctx.cfg.distributed,
        init_adapter=init,
        stage=stage,
    )
