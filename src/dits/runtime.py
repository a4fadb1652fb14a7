"""Objects built from a config: the task and the two-agent system; slices of a task's splits."""

from __future__ import annotations

import itertools

from dits.config import RunConfig
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
