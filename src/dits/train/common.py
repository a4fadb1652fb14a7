"""What the SFT and DPO stages share: loading the start model, trainer arguments, atomic output.

* Start model: a base folder (fresh LoRA via TRL's ``peft_config``, or full fine-tuning), or a base plus a
  LoRA adapter (that adapter is trained further; with ``lora=False`` it is merged first).
* Arguments: CPU-safe when there is no CUDA (fp32, no gradient checkpointing, ``use_cpu``), no
  reporting, no checkpoints, a log line (and loss) per optimizer step, seeded.
* Console: one progress bar per stage (`dits.train.console`); the trainer's log lines are saved with
  the model as ``train_log.jsonl``, its summary as ``train_result.json``.
* Output: training runs in a hidden work folder of this process next to ``out_dir``
  (`dits.utils.private_path`); the saved model is renamed to ``out_dir`` only at the end, so a crash
  never leaves a folder that looks finished. Only this process's own work folder is removed here; those
  of killed processes are removed by the next run that holds the run directory's lock.
* Divergence: a non-finite loss or gradient norm stops training (`DivergenceGuard`), and non-finite
  weights are never saved; either raises `DitsError` naming the stage and the learning rate to lower.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import SchedulerType

from dits.config import LoraSettings, TrainConfig
from dits.errors import DitsError
from dits.models import ModelRef, quiet_libraries, resolve_model
from dits.train.console import TrainingProgress, silence_library_warnings
from dits.utils import private_path

ArgsT = TypeVar("ArgsT")
log = logging.getLogger(__name__)
RESULT_FILE = "train_result.json"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """What a training stage did; ``losses`` has one entry per optimizer step, ``history`` one per log
    line. Saved inside ``output``, which is therefore recorded by its folder name only."""

    output: Path
    examples: int
    dropped: int
    steps: int
    losses: list[float]
    history: list[dict[str, float]]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = self.output.name
        return data


def as_ref(model: str | ModelRef) -> ModelRef:
    """The start model of a stage, resolved (and library progress bars and warnings silenced: the stage
    shows its own bar)."""
    quiet_libraries()
    silence_library_warnings()
    return resolve_model(model) if isinstance(model, str) else model


def load_tokenizer(ref: ModelRef) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(ref.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )


def load_model(ref: ModelRef, *, lora: bool) -> Any:
    """The model a stage starts from, in fp32: the base, or base + adapter (trainable if ``lora``,
    merged into the weights otherwise)."""
    model = AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32)
    if ref.adapter is None:
        return model
    peft_model = PeftModel.from_pretrained(model, str(ref.adapter), is_trainable=lora)
    return peft_model if lora else peft_model.merge_and_unload()


def peft_config_for(ref: ModelRef, cfg: TrainConfig) -> LoraConfig | None:
    """A fresh LoRA config for TRL when the stage adds a new adapter (LoRA on a model without one)."""
    return lora_config(cfg.lora_settings) if cfg.lora and ref.adapter is None else None


def trainer_args(
    config_cls: Callable[..., ArgsT], cfg: TrainConfig, work_dir: Path, seed: int, **extra: Any
) -> ArgsT:
    """TRL config (``SFTConfig``/``DPOConfig``) from a `TrainConfig`; CPU-safe without CUDA."""
    if not 0 <= cfg.warmup_ratio < 1:
        raise DitsError(f"train warmup_ratio must be in [0, 1), not {cfg.warmup_ratio}")
    try:
        SchedulerType(cfg.lr_scheduler)
    except ValueError as exc:
        choices = ", ".join(s.value for s in SchedulerType)
        raise DitsError(
            f"train lr_scheduler {cfg.lr_scheduler!r} is unknown; choose one of {choices}"
        ) from exc
    cuda = torch.cuda.is_available()
    return config_cls(
        output_dir=str(work_dir),
        seed=seed,
        data_seed=seed,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        max_length=cfg.max_length,
        logging_steps=1,
        disable_tqdm=True,  # our own bar replaces the PrinterCallback this adds (`TrainingProgress`)
        save_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        activation_checkpointing=cuda,
        ddp_find_unused_parameters=False,  # under `accelerate launch`: every trainable weight is used
        dataloader_num_workers=0,
        **extra,
    )


def save_model(
    model: Any,
    base: str,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """An HF folder: the trained adapter (pointing at ``base``) or the full model, plus the tokenizer.
    ``state_dict``: the weights gathered from every process (sharded training), else the model's own."""
    if isinstance(model, PeftModel):
        model.peft_config["default"].base_model_name_or_path = base
        # not TRL's frozen "ref" copy
        model.save_pretrained(str(folder), selected_adapters=["default"], state_dict=state_dict)
    else:
        model.save_pretrained(str(folder), state_dict=state_dict)
    tokenizer.save_pretrained(str(folder))


class DivergenceGuard(TrainerCallback):
    """Stops training at the first log line whose loss or gradient norm is not finite (NaN, inf) and
    remembers it (``found``: step, quantity, value)."""

    def __init__(self) -> None:
        self.found: tuple[int, str, float] | None = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        for quantity in ("loss", "grad_norm"):
            value = (logs or {}).get(quantity)
            if self.found is None and value is not None and not math.isfinite(value):
                self.found = (state.global_step, quantity.replace("_", " "), value)
                control.should_training_stop = True


def non_finite_parameter(model: Any) -> str | None:
    """The name of the first parameter of ``model`` with a NaN or infinite value (None: all finite)."""
    with torch.no_grad():
        return next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)


def train_and_save(
    make_trainer: Callable[[Path], Trainer],
    *,
    name: str,
    base: str,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    seed: int,
    rows: int,
    stage: str | None = None,
) -> TrainResult:
    """Build a trainer (seeded), train it under a progress bar named ``name``, save atomically to
    ``out_dir`` with its log, report.

    ``rows`` is the number of rows the caller was given; the ones missing from the trainer's dataset
    (dropped by our length fitting or by TRL) are reported as ``dropped``. Divergence raises `DitsError`
    naming ``stage`` and the setting ``NAME.learning_rate`` (e.g. ``dpo.learning_rate``); nothing is saved.
    Under ``accelerate launch`` every process trains and only the main one shows the bar and writes
    ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = private_path(out_dir, "work")
    started = time.perf_counter()
    try:
        set_seed(seed)
        trainer = make_trainer(work / "trainer")
        guard = DivergenceGuard()
        trainer.add_callback(guard)
        main = trainer.accelerator.is_main_process
        with TrainingProgress(f"{name} training").attach(trainer) if main else nullcontext():
            trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
        bad = non_finite_parameter(model)
        if guard.found or bad:
            step, quantity, value = guard.found or (trainer.state.global_step, f"weight {bad}", math.nan)
            raise DitsError(
                f"{f'stage {stage}: ' if stage else ''}{name} training diverged at step {step} ({quantity} "
                f"is {value}); nothing was saved. Lower {name.lower()}.learning_rate (now "
                f"{trainer.args.learning_rate:g}) and run again"
            )
        history = [dict(entry) for entry in trainer.state.log_history]
        examples = len(trainer.train_dataset)
        if examples < rows and main:
            log.warning(
                "%d of %d training rows do not fit max_length and were left out", rows - examples, rows
            )
        result = TrainResult(
            output=out_dir,
            examples=examples,
            dropped=rows - examples,
            steps=trainer.state.global_step,
            losses=[float(entry["loss"]) for entry in history if "loss" in entry],
            history=history,
            wall_time=time.perf_counter() - started,
        )
        accelerator = trainer.accelerator
        # every process takes part in gathering sharded weights (DeepSpeed ZeRO-3, FSDP)
        gathered = accelerator.get_state_dict(trainer.model) if accelerator.num_processes > 1 else None
        if main:
            staged = work / "model"
            save_model(model, base, tokenizer, staged, gathered)
            (staged / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=1))
            steps = [
                entry for entry in history if "train_runtime" not in entry
            ]  # the run's timing: result file
            (staged / LOG_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in steps))
            _replace_dir(staged, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted after."""
    old = private_path(dst, "old")
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
