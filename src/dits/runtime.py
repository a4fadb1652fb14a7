"""Objects a run needs, built from its config: the task, the two-agent system, reward weights."""

from __future__ import annotations

import itertools

from dits.config import RunConfig
from dits.mas.dialogue import DialogueRules, TwoAgentSystem
from dits.reward import RewardWeights
from dits.tasks.base import Split, Task, TaskInstance
from dits.tasks.registry import get_task


def build_task(cfg: RunConfig) -> Task:
    return get_task(cfg.task.name, cfg.task.data_files or None, **cfg.task.options)


def build_system(cfg: RunConfig) -> TwoAgentSystem:
    """Alice and Bob playing the configured task under the configured protocol."""
    return TwoAgentSystem(build_task(cfg), DialogueRules(**cfg.dialogue.model_dump()))


def reward_weights(cfg: RunConfig) -> RewardWeights:
    return RewardWeights(**cfg.reward.model_dump())


def take(task: Task, split: Split | str, limit: int | None, offset: int = 0) -> list[TaskInstance]:
    """Instances ``offset .. offset+limit`` of a split (all of it when ``limit`` is None)."""
    stop = None if limit is None else offset + limit
    return list(itertools.islice(task.instances(split), offset, stop))  # type: ignore[arg-type]
