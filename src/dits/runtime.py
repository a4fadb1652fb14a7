"""Objects built from a config: the task, the two-agent system, the engine serving a run's policies
(`ModelHost`); slices of a task's splits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from dits.config import RunConfig
from dits.engines.base import SERVED, Engine
from dits.engines.factory import make_engine
from dits.errors import DitsError
from dits.mas.dialogue import TwoAgentSystem
from dits.tasks.base import Task, TaskInstance
from dits.tasks.registry import get_task
from dits.tasks.types import Split


def build_task(cfg: RunConfig) -> Task:
    return get_task(cfg.task.name, cfg.task.data_files or None, **cfg.task.options)


def build_system(cfg: RunConfig) -> TwoAgentSystem:
    """Alice and Bob playing the configured task under the configured protocol (``cfg.dialogue``)."""
    return TwoAgentSystem(build_task(cfg), cfg.dialogue)


def check_limit(task: Task, limit: int | None) -> None:
    """Refuse to read a whole split (``limit`` None) of a task whose splits never end."""
    if limit is None and task.endless:
        raise DitsError(
            f"task {task.name} is generated without end, so its splits have no last instance: give a limit "
            "(eval.limit in a config, --limit on the command line)"
        )


def take(task: Task, split: Split | str, limit: int | None, offset: int = 0) -> list[TaskInstance]:
    """Instances ``offset .. offset+limit`` of a split (all of it when ``limit`` is None)."""
    check_limit(task, limit)
    stop = None if limit is None else offset + limit
    return list(itertools.islice(task.instances(split), offset, stop))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Policy:
    """A model trained by the run: ``name`` is its adapter name in the engine (unique across runs that
    share an engine), ``path`` its folder (a PEFT LoRA adapter, or a full model with ``lora: false``)."""

    name: str
    path: Path

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").exists()


class ModelHost:
    """What a stage's programs run on: the config, its two-agent system and an engine (created on first
    use, or given) serving the run's policies. The driver's `dits.context.StageContext` is one; so is
    every worker of `dits.distributed`, built from the same config."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.system = build_system(cfg)
        self.reward = cfg.reward
        self._engine = engine
        self._served_model = cfg.model  # what the engine serves as SERVED

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
