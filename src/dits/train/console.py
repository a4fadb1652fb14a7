"""What a training stage shows on the console: one rich bar instead of the trainer's printed log dicts,
and no library warnings a user cannot act on. The full log goes to the stage's folder (`dits.train.common`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from dits.progress import human, progress_bar


def silence_library_warnings() -> None:
    """Ignore warnings the libraries raise on every stage that only their own code could fix."""
    # PEFT reads `model.is_gradient_checkpointing`, which transformers 5 deprecates for every model
    warnings.filterwarnings(
        "ignore",
        message="`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


class TrainingProgress(TrainerCallback):
    """One bar per training run: optimizer steps done/total, the latest loss, ETA. Only observes.

    Use it as ``with TrainingProgress(...).attach(trainer): trainer.train()`` so that the bar is closed
    even when training fails; it replaces the `PrinterCallback` that ``disable_tqdm=True`` adds.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar = ExitStack()
        self._advance: Callable[..., None] | None = None
        self._step = 0

    def attach(self, trainer: Trainer) -> TrainingProgress:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(self)
        return self

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._advance = self._bar.enter_context(progress_bar(self.description, state.max_steps))
        self._step = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        assert self._advance is not None
        self._advance(state.global_step - self._step)
        self._step = state.global_step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._advance is not None and logs and "loss" in logs:
            self._advance(0, status=f"loss {human(logs['loss'])}")
