"""What every stage function receives: `StageContext` — the run's config, executor, store, two-agent
system, reward settings, the engine, seeds and the train-task cursor.

Stage functions live in their domains (`dits.isft`, `dits.search.stages`, `dits.influence.stages`,
`dits.train.stages`, `dits.evaluate`) and take a context; recipes (`dits.recipes`) call them in order.

Models of a run are `Policy` values: a trained LoRA adapter or full model (its engine-wide name and its
folder), or ``None`` for the run's initial model (``cfg.model``). `StageContext.serve` makes a policy
available to the engine and returns the adapter name its requests carry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from dits.config import INFLUENCE_METHODS, RunConfig
from dits.engines.base import SERVED, Engine, require
from dits.engines.factory import make_engine
from dits.errors import DitsError
from dits.executor import Run, StageWork
from dits.models import ModelRef, resolve_model
from dits.runtime import build_system, check_limit, take
from dits.tasks.base import TaskInstance


@dataclass(frozen=True)
class Policy:
    """A model trained by the run: ``name`` is its adapter name in the engine (unique across runs that
    share an engine), ``path`` its folder (a PEFT LoRA adapter, or a full model with ``lora: false``)."""

    name: str
    path: Path

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").exists()


class StageContext:
    """The run a stage works in, held by this process until `close` (or the end of a ``with`` block).
    The engine is created on first use (``engine``), or given. ``redo``: see `dits.executor.Run`.

    Everything a config names is checked before the run directory is touched: the task (and its data
    files), the model, and that a given engine can do what the method needs."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None, *, redo: str | None = None) -> None:
        self.cfg = cfg
        self.system = build_system(cfg)
        check_limit(self.system.task, cfg.eval.limit)
        resolve_model(cfg.model)
        if engine is not None and cfg.method in INFLUENCE_METHODS:
            require(engine, "trainable_model", f"method {cfg.method} (influence probes)")
        self.run = Run(cfg, redo=redo)
        self.store = self.run.store
        self.reward = cfg.reward
        self._engine = engine
        self._served_model = cfg.model  # what the engine serves as SERVED
        self._cursor = 0
        self.live: dict[str, Any] = {}
        """Objects built once per process and shared by several stages (e.g. an iteration's θ*)."""

    def close(self) -> None:
        """Release the run directory (the engine stays usable)."""
        self.run.close()

    def __enter__(self) -> StageContext:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.cfg.engine, self.cfg.model)
        return self._engine

    def serve(self, policy: Policy | None) -> str | None:
        """The adapter name under which ``policy`` generates (loaded into the engine on first use).

        ``None`` (the initial model) and a fully fine-tuned policy are the engine's `SERVED` model; for
        the latter the engine is replaced by one that serves the policy's folder (with the initial model
        kept as the frozen reference of the readability NLL). A scripted engine has no weights and
        serves any policy as it is.
        """
        if policy is None:
            return SERVED
        if not policy.is_adapter:
            if self.cfg.engine.kind != "fake" and self._served_model != str(policy.path):
                self._engine = make_engine(self.cfg.engine, str(policy.path), reference=self.cfg.model)
                self._served_model = str(policy.path)
            return SERVED
        if policy.name not in self.engine.adapters():
            self.engine.load_adapter(policy.name, str(policy.path))
        return policy.name

    def policy(self, iteration: str, stage: str) -> Policy:
        """The policy stage ``iteration/stage`` trains (its folder in the run directory)."""
        name = re.sub(r"\W", "_", f"{self.cfg.name}_{iteration}_{stage}")
        return Policy(name, self.store.path(iteration, stage))

    def model_ref(self, policy: Policy | None) -> ModelRef:
        """What training stages start from: the initial model, or the policy's folder."""
        return resolve_model(self.cfg.model if policy is None else str(policy.path))

    # ------------------------------------------------------------------ stages
    def stage(self, key: str, work: StageWork, outputs: Sequence[Path] = ()) -> dict[str, Any]:
        """Run stage ``key`` through the executor (skipped when done), counting the engine's tokens;
        ``outputs``: the files and folders it writes in the run directory (recorded and verified)."""
        return self.run.stage(key, work, outputs=outputs, tokens=self._generated_tokens)

    def _generated_tokens(self) -> int:
        return self._engine.stats.generated_tokens if self._engine is not None else 0

    def seed(self, *parts: object) -> int:
        return self.run.seed(*parts)

    def train_seed(self, *parts: object) -> int:
        return self.run.train_seed(*parts)

    def replica_seed(self, *parts: object) -> int:
        """Seeds of the stages after SFT (search, influence, selection, DPO): they change with
        ``replicate``, the SFT model and the tasks do not."""
        return self.run.replica_seed(*parts)

    # ------------------------------------------------------------------ tasks
    def train_tasks(self, stage: str, count: int) -> list[TaskInstance]:
        """The next ``count`` train tasks, for stage ``stage``. One cursor runs over the train split in
        the order the recipe calls its synthesis stages (Optima's sequential, wrap-free task stream), so
        every stage gets fresh tasks; stages call this whether or not they are already done, so a
        resumed run gives every stage the same tasks."""
        offset = self._cursor
        instances = take(self.system.task, "train", count, offset)
        if len(instances) < count:
            raise DitsError(
                f"task {self.cfg.task.name}: stage {stage} needs train tasks {offset}..{offset + count} but the "
                f"train split has only {offset + len(instances)}; lower isft/search.tasks_per_iteration"
            )
        self._cursor += count
        return instances

    def tasks(self, split: str, limit: int | None) -> list[TaskInstance]:
        """The first ``limit`` instances of a split (validation, test)."""
        return take(self.system.task, split, limit)
